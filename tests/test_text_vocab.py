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
