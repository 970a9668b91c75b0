"""VocabTextEncoder: word splitting, padding, errors, save/load round trip."""
import pytest
import torch

from rfrt.text_vocab import VocabTextEncoder, split_words

VOCAB = ["a", "red", "blue", "circle", "moves", "left", "on", "background"]


def _enc(layers=1):
    torch.manual_seed(0)
    return VocabTextEncoder(VOCAB, dim=8, max_words=6, layers=layers)


def test_split_words_lowercases_and_drops_punctuation():
    assert split_words("A Red, circle moves LEFT!") == ["a", "red", "circle", "moves", "left"]


@pytest.mark.parametrize("layers", [0, 1])
def test_encode_shape_padding_case_and_order(layers):
    enc = _enc(layers)
    out = enc.encode(["a red circle", "A RED Circle", "circle red a", ""])
    assert out.shape == (4, 6, 8)
    assert torch.equal(out[:, 3:], torch.zeros(4, 3, 8))  # padding rows are zero
    assert torch.equal(out[3], torch.zeros(6, 8))  # the empty prompt is the CFG unconditional embedding
    assert torch.equal(out[0], out[1])  # case-insensitive
    assert (out[0] - out[2]).abs().max() > 1e-3  # word order matters (learned positions)


def test_ids_follow_vocabulary_order():
    ids = _enc().token_ids(["red a"])
    assert ids.tolist() == [[2, 1, 0, 0, 0, 0]]


def test_unknown_word_error_names_it_and_known_words():
    with pytest.raises(ValueError, match=r"\['dragon'\].*e\.g\. a, red"):
        _enc().encode(["a red dragon"])


def test_too_long_and_single_string_rejected():
    with pytest.raises(ValueError, match="max_words=6"):
        _enc().encode(["a red circle moves left on a background"])
    with pytest.raises(TypeError, match="list of prompts"):
        _enc().encode("a red circle")


def test_save_load_round_trip(tmp_path):
    enc = _enc()
    with torch.no_grad():
        enc.word_embedding.weight.add_(torch.randn_like(enc.word_embedding.weight))
    enc.save(tmp_path / "te")
    back = VocabTextEncoder.from_pretrained(tmp_path / "te")
    assert back.vocab == enc.vocab and back.config == enc.config
    prompts = ["a blue circle moves left", "red"]
    assert torch.equal(back.encode(prompts), enc.encode(prompts))


def test_load_missing_file_is_clear(tmp_path):
    _enc().save(tmp_path / "te")
    (tmp_path / "te" / "vocab.json").unlink()
    with pytest.raises(FileNotFoundError, match="vocab.json"):
        VocabTextEncoder.load(tmp_path / "te")


def test_bad_vocab_rejected():
    with pytest.raises(ValueError, match="duplicate"):
        VocabTextEncoder(["a", "a"], 4, 2)
    with pytest.raises(ValueError, match="single lower-case words"):
        VocabTextEncoder(["two words"], 4, 2)


# ---- issue #14, item 8: no silent unconditional generation; non-ASCII letters belong to words ----

def test_non_ascii_letters_and_symbols_are_word_characters():
    assert split_words("a large réd circle") == ["a", "large", "réd", "circle"]
    assert split_words("赤い円が右へ") == ["赤い円が右へ"]
    assert split_words("a red circle 🚀🔥!") == ["a", "red", "circle", "🚀🔥"]
    assert split_words("RÉD\x01\x1b[31m, don't") == ["réd", "31m", "don't"]  # controls and punctuation split
    assert split_words("a-b_c/d+e") == ["a", "b", "c", "d", "e"]  # ASCII splits exactly as before


@pytest.mark.parametrize("prompt, why", [
    ("a large réd circle", r"outside this text encoder's vocabulary: \['large', 'réd'\]"),
    ("赤い円が右へ", r"outside this text encoder's vocabulary: \['赤い円が右へ'\]"),
    ("a red circle 🚀🔥", r"vocabulary: \['🚀🔥'\]"),
    ("!!!", r"has no word this text encoder knows \(it knows 8 words, e\.g\. a, red"),
    ("... ?", "has no word this text encoder knows"),
])
def test_prompts_without_known_words_are_refused(prompt, why):
    with pytest.raises(ValueError, match=why):
        _enc().encode([prompt])


def test_the_empty_prompt_stays_the_unconditional_embedding():
    """Training's classifier-free dropout encodes "" on purpose: that stays all zeros."""
    assert torch.equal(_enc().encode([""]), torch.zeros(1, 6, 8))


def test_corrupt_encoder_files_name_the_file(tmp_path):
    d = _enc().save(tmp_path / "enc")
    (d / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes()[:40])
    with pytest.raises(ValueError, match=r"cannot read .*model\.safetensors as safetensors"):
        VocabTextEncoder.load(d)
    (d / "config.json").write_bytes(b"\xa7\xff")
    with pytest.raises(ValueError, match=r"cannot read .*config\.json"):
        VocabTextEncoder.load(d)


def test_default_model_refuses_wordless_prompts_in_the_api_and_the_cli(tmp_path, capsys):
    from rfrt import cli
    from rfrt.model_dir import default_model_path
    from rfrt.runtime.generator import StreamGenerator

    if default_model_path() is None:
        pytest.skip("the embedded default model is not installed")
    gen = StreamGenerator(device="cpu")
    for prompt in ("!!!", "赤い円が右へ", "🚀"):
        with pytest.raises(ValueError, match="no word this text encoder knows|outside this text encoder"):
            gen.reset(prompt)
    gen.reset("a large red circle moves right on a blue background")
    with pytest.raises(ValueError, match="no word"):
        gen.set_prompt("!!!")
    assert gen.prompt == "a large red circle moves right on a blue background"  # the old prompt is kept
    out = tmp_path / "v.mp4"
    assert cli.main(["generate", "!!!", "--chunks", "1", "--device", "cpu", "--out", str(out)]) == 1
    assert "has no word this text encoder knows" in capsys.readouterr().err
    assert not out.exists()
