"""Training stages on the tiny config: teacher -> ODE init -> DMD / Re-DMD, on one CPU process.

Each stage runs 2 steps (finite losses, weights move), resumes exactly (2 + 2 steps == 4 straight), the
rollout matches an independent block-causal reference, and the Re-DMD weight reaches the gradient in closed form.
"""
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from rfrt.cache import CachePolicy
from rfrt.models import BlockCausalAttention
from rfrt.sampling import flow_to_x0, renoise, timestep_tensor, warped_sigmas, warped_timesteps
from train.config import ConfigError, load_config
from train.stages import build_stage
from train.data.synthetic_world import describe_scene, render_scene, with_shift, with_speed, world_of
from train.stages.common import DistInfo, dit_config, init_dit, load_dit
from train.stages.dmd import generator_loss
from train.stages.regress import nearest_clip, shift_grid
from train.stages.rollout import rollout, training_policy

TINY = Path(__file__).resolve().parent.parent / "train" / "configs" / "tiny_test.yaml"


def make_cfg(out_dir, **sections):
    data = yaml.safe_load(TINY.read_text())
    for section, values in sections.items():
        data.setdefault(section, {}).update(values)
    data["run"]["out_dir"] = str(out_dir)
    return load_config(data)


def run_stage(out_dir, **sections):
    trainer = build_stage(make_cfg(out_dir, **sections), progress=False)
    return trainer, trainer.run()


def dit_weights(model_dir):
    return load_file(str(Path(model_dir) / "dit" / "model.safetensors"))


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """Teacher (2 steps) -> ODE student (2 steps), shared by the tests below."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("stages")
    _, teacher_metrics = run_stage(root / "teacher", stage={"kind": "teacher"})
    _, ode_metrics = run_stage(root / "ode", stage={"kind": "ode"}, model={"teacher": str(root / "teacher/export")})
    return root, teacher_metrics, ode_metrics


def dmd_sections(root, **reward):
    return {"stage": {"kind": "dmd"}, "reward": {"kind": "motion", "beta": 2.0, **reward},
            "model": {"teacher": str(root / "teacher/export"), "student_init": str(root / "ode/export")}}


def test_teacher_stage_trains(pipeline):
    root, metrics, _ = pipeline
    assert torch.isfinite(torch.tensor(metrics["loss"])) and metrics["loss"] > 0
    cfg = make_cfg(root / "x")
    init = init_dit(dit_config(cfg.arch), cfg.run.seed).state_dict()
    trained = dit_weights(root / "teacher/export")
    moved = max((trained[k] - init[k]).abs().max().item() for k in init)
    assert moved > 1e-4  # two AdamW steps at lr 1e-3 move weights by ~1e-3
    assert (root / "teacher/export/text_encoder/vocab.json").is_file()


def test_ode_stage_trains_from_teacher_pairs(pipeline):
    root, _, metrics = pipeline
    assert torch.isfinite(torch.tensor(metrics["loss"]))
    pairs = torch.load(root / "ode/ode_pairs.pt", weights_only=True)
    assert pairs["states"].shape == (4, 4, 6, 3, 8, 8)  # 4 pairs, 4 warped steps, [F, C, H, W]
    assert torch.isfinite(pairs["x0"]).all()
    t, s = dit_weights(root / "teacher/export"), dit_weights(root / "ode/export")
    assert max((t[k] - s[k]).abs().max().item() for k in t) > 1e-4


def test_ode_stage_through_the_inference_cache_trains_and_resumes(pipeline, tmp_path):
    root = pipeline[0]
    sections = {"stage": {"kind": "ode", "ode_attention": "cache", "ode_pairs_path": str(root / "ode/ode_pairs.pt")},
                "model": {"teacher": str(root / "teacher/export")}, "run": {"steps": 4, "checkpoint_every": 2}}
    straight, metrics = run_stage(tmp_path / "straight", **sections)
    assert torch.isfinite(torch.tensor(metrics["loss"])) and metrics["loss"] > 0
    t, s = dit_weights(root / "teacher/export"), dit_weights(tmp_path / "straight/export")
    assert max((t[k] - s[k]).abs().max().item() for k in t) > 1e-4
    run_stage(tmp_path / "split", **{**sections, "run": {"steps": 2, "checkpoint_every": 2}})
    resumed, _ = run_stage(tmp_path / "split", **sections)
    for (k, x), (_, y) in zip(straight.student.state_dict().items(), resumed.student.state_dict().items()):
        assert torch.equal(x, y), f"ode (cache): student.{k} differs after resume"


def test_ode_stage_from_a_causal_teacher(pipeline, tmp_path):
    root = pipeline[0]  # the ODE student stands in for a causal teacher (stage forcing's product)
    _, metrics = run_stage(tmp_path / "odec", stage={"kind": "ode", "ode_teacher": "causal", "ode_attention": "cache"},
                           model={"teacher": str(root / "ode/export")})
    pairs = torch.load(tmp_path / "odec/ode_pairs.pt", weights_only=True)
    assert pairs["states"].shape == (4, 4, 6, 3, 8, 8) and torch.isfinite(pairs["x0"]).all()
    assert torch.isfinite(torch.tensor(metrics["loss"]))


def test_dmd_with_a_causal_teacher_trains(pipeline, tmp_path):
    root = pipeline[0]  # the ODE student stands in for a causal teacher (stage forcing's product)
    sections = dmd_sections(root)
    sections["model"]["teacher"] = str(root / "ode/export")
    sections["dmd"] = {"score": "causal"}
    trainer, metrics = run_stage(tmp_path / "dmdc", **sections)
    assert torch.isfinite(torch.tensor(metrics["critic_loss"]))
    rows = (tmp_path / "dmdc/metrics.csv").read_text().splitlines()
    header, first = rows[0].split(","), rows[1].split(",")
    assert float(first[header.index("gen_loss")]) > 0
    with pytest.raises(ValueError, match="score_frames"):
        build_stage(make_cfg(tmp_path / "bad", **{**sections, "rollout": {"num_frames": 6, "score_frames": 3}}),
                    progress=False)


def test_forcing_stage_trains_past_the_window_and_resumes(pipeline, tmp_path):
    root = pipeline[0]
    # 9 frames with sink 3 + window 6: chunk 2 is the first whose cache has evicted (and folded) chunk 1.
    sections = {"stage": {"kind": "forcing"}, "model": {"student_init": str(root / "ode/export")},
                "data": {"num_frames": 9}, "rollout": {"num_frames": 9, "sink_ema_during_training": True},
                "run": {"steps": 4, "checkpoint_every": 2}}
    straight, metrics = run_stage(tmp_path / "straight", **sections)
    assert torch.isfinite(torch.tensor(metrics["loss"])) and metrics["loss"] > 0
    s0, s1 = dit_weights(root / "ode/export"), dit_weights(tmp_path / "straight/export")
    assert max((s0[k] - s1[k]).abs().max().item() for k in s0) > 1e-4
    run_stage(tmp_path / "split", **{**sections, "run": {"steps": 2, "checkpoint_every": 2}})
    resumed, _ = run_stage(tmp_path / "split", **sections)
    for (k, x), (_, y) in zip(straight.student.state_dict().items(), resumed.student.state_dict().items()):
        assert torch.equal(x, y), f"forcing: student.{k} differs after resume"
    with pytest.raises(ValueError, match="must equal rollout.num_frames"):
        build_stage(make_cfg(tmp_path / "bad", **{**sections, "data": {"num_frames": 6}}), progress=False)


def test_later_windows_are_slices_of_the_clip_with_their_first_chunk_context_only():
    from train.stages.forcing import later_windows

    clips = torch.arange(64 * 15, dtype=torch.float32).reshape(64, 15, 1, 1, 1).expand(64, 15, 3, 2, 2)
    torch.manual_seed(0)
    windows, weights = later_windows(clips, 9, 3, 0.5)
    start = windows[:, 0, 0, 0, 0] - clips[:, 0, 0, 0, 0]
    assert ((start >= 0) & (start <= 6)).all()
    torch.testing.assert_close(windows[:, :, 0, 0, 0], clips[:, 0, :1, 0, 0] + start[:, None] + torch.arange(9.0))
    assert torch.equal(weights[:, 0], (start == 0).float()) and (weights[:, 1:] == 1).all()
    assert 16 <= int((start > 0).sum()) <= 48  # Binomial(64, 0.5): outside this with probability < 1e-4
    assert torch.equal(later_windows(clips, 9, 3, 0.0)[0], clips[:, :9])


def test_forcing_on_later_windows_is_the_masked_flow_matching_loss(pipeline, tmp_path):
    """The stage's loss with every clip a later window equals the flow-matching loss over chunks 1.. of the
    windows, recomputed here from the same RNG draws with the plain (whole-clip) loss's pieces."""
    from rfrt.sampling import shift_sigma
    from train.stages.rollout import teacher_forced_flow

    root = pipeline[0]
    sections = {"stage": {"kind": "forcing", "forcing_later_windows": 1.0, "text_dropout": 0.0},
                "model": {"student_init": str(root / "ode/export")}, "data": {"num_frames": 15},
                "rollout": {"num_frames": 9, "sink_ema_during_training": True}, "run": {"steps": 2}}
    trainer = build_stage(make_cfg(tmp_path / "later", **sections), progress=False)
    video, prompts = trainer.data.next("cpu")
    torch.manual_seed(3)
    loss = trainer.loss(video, prompts)
    torch.manual_seed(3)
    B = video.shape[0]
    torch.rand(B)  # later_windows: which clips are later windows (all, p = 1)
    start = torch.randint(1, 15 - 9 + 1, (B,))
    window = torch.stack([video[b, start[b]:start[b] + 9] for b in range(B)])
    sigma = shift_sigma(torch.rand(B, 3), trainer.cfg.stage.teacher_shift)
    eps = torch.randn_like(window)
    torch.rand(B)  # drop_prompts (text_dropout 0: none dropped)
    per_frame = sigma.repeat_interleave(3, dim=1)[..., None, None, None]
    with torch.no_grad():
        v = teacher_forced_flow(trainer.student, trainer.student.cross_kv(trainer.text.encode(prompts)),
                                (1 - per_frame) * window + per_frame * eps, sigma, window, trainer.policy,
                                trainer.cfg.sampler.num_train_timesteps)
    want = ((v - (eps - window)) ** 2)[:, 3:].mean()
    torch.testing.assert_close(loss.detach(), want, rtol=1e-5, atol=1e-7)
    _, metrics = run_stage(tmp_path / "later_run", **sections)
    assert torch.isfinite(torch.tensor(metrics["loss"])) and metrics["loss"] > 0
    with pytest.raises(ValueError, match="must exceed rollout.num_frames"):
        build_stage(make_cfg(tmp_path / "bad", **{**sections, "data": {"num_frames": 9}}), progress=False)


def test_ode_stage_on_policy_pairs_store_the_students_context_and_train_on_it(pipeline, tmp_path):
    root = pipeline[0]  # the ODE student stands in for the causal teacher and the rolling-out student
    sections = {"stage": {"kind": "ode", "ode_teacher": "causal", "ode_attention": "cache", "ode_context": "student",
                          "ode_pairs": 4, "ode_substeps": 4},
                "model": {"teacher": str(root / "ode/export"), "student_init": str(root / "ode/export")},
                "data": {"num_frames": 12}, "rollout": {"num_frames": 12, "sink_ema_during_training": True}}
    trainer, metrics = run_stage(tmp_path / "onpolicy", **sections)
    pairs = torch.load(tmp_path / "onpolicy/ode_pairs.pt", weights_only=True)
    assert pairs["context"].shape == pairs["x0"].shape == (4, 12, 3, 8, 8)
    assert not torch.allclose(pairs["context"], pairs["x0"], atol=1e-3)  # 4-step student vs the 4-substep ODE
    assert torch.isfinite(torch.tensor(metrics["loss"])) and metrics["loss"] > 0
    primed = {**sections, "stage": {**sections["stage"], "ode_prime_fraction": 1.0, "ode_prime_chunks": 2}}
    run_stage(tmp_path / "primed", **primed)
    pairs = torch.load(tmp_path / "primed/ode_pairs.pt", weights_only=True)
    scenes = world_of(make_cfg(tmp_path / "x", **primed).data, num_frames=12, seed=7919, max_start_frame=32)
    n = next(k for k in (6, 3) if all(torch.allclose(pairs["context"][j, :k], scenes[j][0][:k]) for j in range(4)))
    assert not torch.allclose(pairs["context"][:, n:n + 3], torch.stack([scenes[j][0][n:n + 3] for j in range(4)]))
    with pytest.raises(ConfigError, match="needs model.student_init"):
        make_cfg(tmp_path / "bad", **{**sections, "model": {"teacher": str(root / "ode/export")}})
    with pytest.raises(ConfigError, match="needs ode_teacher"):
        make_cfg(tmp_path / "bad", **{**sections, "stage": {**sections["stage"], "ode_attention": "block_causal"}})


def test_ode_stage_world_pairs_are_world_clips_continuing_the_students_chunks(pipeline, tmp_path):
    """stage.ode_teacher "world": no teacher model; each pair's x0 continues the student's stored context as a clip
    of the world's own scene at a world speed (train/stages/world_ode.py has the closed-form checks)."""
    import numpy as np

    from train.data.synthetic_world import render_variants
    from train.stages.rollout import teacher_forced_flow
    from train.stages.world_ode import torus_shifts

    root = pipeline[0]
    world = {"layout": "canonical", "phase": "fixed", "num_frames": 12}
    sections = {"stage": {"kind": "ode", "ode_teacher": "world", "ode_attention": "cache", "ode_context": "student",
                          "ode_pairs": 4, "ode_substeps": 4},
                "model": {"student_init": str(root / "ode/export")}, "data": world,
                "rollout": {"num_frames": 12, "sink_ema_during_training": True}}
    trainer, metrics = run_stage(tmp_path / "world", **sections)
    assert torch.isfinite(torch.tensor(metrics["loss"])) and metrics["loss"] > 0
    pairs = torch.load(tmp_path / "world/ode_pairs.pt", weights_only=True)
    scenes = world_of(trainer.cfg.data, num_frames=12, seed=trainer.cfg.data.seed + 7919)
    speeds = np.linspace(0.5, 1.5, 21)
    for j in range(4):
        scene = scenes.scene(j)
        assert pairs["prompts"][j] == describe_scene(scene)
        variants = render_variants(scene, speeds, torus_shifts(scene, 2.0))
        for c in range(4):
            frames = slice(3 * c, 3 * c + 3)
            assert (variants[:, frames] - pairs["x0"][j, frames]).abs().flatten(1).amax(1).min() < 1e-5, (j, c)
    assert not torch.allclose(pairs["context"], pairs["x0"], atol=1e-3)  # the student's chunks, not the world's
    with pytest.raises(ConfigError, match="needs data.phase fixed"):
        make_cfg(tmp_path / "bad", **{**sections, "data": {**world, "phase": "random"}})

    # stage.ode_object_weight: the pairs' world clips have the scene's background colour exactly, so the object
    # pixels are known without object_mask's median
    from train.data.synthetic_world import COLOURS

    weighted = {**sections, "stage": {**sections["stage"], "ode_object_weight": 3.0,
                                      "ode_pairs_path": str(tmp_path / "world/ode_pairs.pt")}}
    trainer = build_stage(make_cfg(tmp_path / "weighted", **weighted), progress=False)
    idx = torch.tensor([0, 2])
    torch.manual_seed(3)
    loss = trainer.loss(idx)
    torch.manual_seed(3)
    k = torch.randint(0, 4, (2, 4))
    states, x0 = pairs["states"][idx], pairs["x0"][idx]
    frames_k = k.repeat_interleave(3, dim=1)
    x = states[torch.arange(2)[:, None], frames_k, torch.arange(12)[None]]
    sig = warped_sigmas(trainer.cfg.sampler)
    with torch.no_grad():
        cross = trainer.student.cross_kv(trainer.text.encode([pairs["prompts"][i] for i in idx]))
        v = teacher_forced_flow(trainer.student, cross, x, sig[k], pairs["context"][idx],
                                training_policy(trainer.cfg.rollout), 1000)
    pred = x - sig[frames_k][..., None, None, None] * v
    background = torch.stack([torch.tensor(COLOURS[scenes.scene(int(i)).background]) * 2 - 1 for i in idx]).float()
    mask = ((x0 - background[:, None, :, None, None]).abs() > 1e-3).any(dim=2, keepdim=True)
    assert 0 < mask.float().mean() < 0.5
    w = 1 + 3.0 * mask.float()
    torch.testing.assert_close(loss.detach(), (w * (pred - x0) ** 2).mean() / w.mean(), rtol=1e-5, atol=1e-7)
    assert not torch.allclose(loss.detach(), ((pred - x0) ** 2).mean())


def test_dmd_and_redmd_stage_train(pipeline, tmp_path):
    root = pipeline[0]
    trainer, metrics = run_stage(tmp_path / "dmd", **dmd_sections(root))
    assert trainer.exit_steps and all(0 <= k < 4 for k in trainer.exit_steps)
    for key in ("critic_loss", "critic_grad_norm"):
        assert torch.isfinite(torch.tensor(metrics[key]))
    rows = (tmp_path / "dmd/metrics.csv").read_text().splitlines()
    header, first = rows[0].split(","), rows[1].split(",")
    assert float(first[header.index("gen_loss")]) > 0 and first[header.index("reward_z")] != ""
    ode, student = dit_weights(root / "ode/export"), dit_weights(tmp_path / "dmd/export")
    assert max((ode[k] - student[k]).abs().max().item() for k in ode) > 1e-4
    critic0 = dit_weights(root / "teacher/export")
    critic = trainer.critic.state_dict()
    assert max((critic0[k] - critic[k]).abs().max().item() for k in critic0) > 1e-4


@pytest.mark.parametrize("stage", ["teacher", "ode", "dmd"])
def test_resume_is_exact(pipeline, tmp_path, stage):
    root = pipeline[0]
    sections = dmd_sections(root) if stage == "dmd" else {"stage": {"kind": stage},
                                                          "model": {"teacher": str(root / "teacher/export")}}
    sections["run"] = {"steps": 4, "checkpoint_every": 2}
    if stage == "ode":
        sections["stage"]["ode_pairs_path"] = str(root / "ode/ode_pairs.pt")
    straight, _ = run_stage(tmp_path / "straight", **sections)
    run_stage(tmp_path / "split", **{**sections, "run": {"steps": 2, "checkpoint_every": 2}})
    resumed, _ = run_stage(tmp_path / "split", **sections)
    a, b = straight.state(), resumed.state()
    for name in a:
        if isinstance(a[name], torch.nn.Module):
            for (k, x), (_, y) in zip(a[name].state_dict().items(), b[name].state_dict().items()):
                assert torch.equal(x, y), f"{stage}: {name}.{k} differs after resume"
    if stage == "dmd":
        assert len(resumed.exit_steps) == 6  # steps 2, 3: (generator +) critic rollouts, 2 micro-steps each
        assert straight.exit_steps[-6:] == resumed.exit_steps
        assert all(torch.equal(straight.ema.shadow[k], resumed.ema.shadow[k]) for k in straight.ema.shadow)


def test_rollout_matches_block_causal_reference_and_grads_only_at_exit():
    """With a window covering the rollout, the cache rollout equals the block-causal model run chunk by chunk
    (absolute positions = window-relative ones, sink = chunk 0's context pass); only exit forwards get grad."""
    torch.manual_seed(0)
    cfg = make_cfg("unused")
    model = init_dit(dit_config(cfg.arch), 3)
    with torch.no_grad():  # adaLN-zero init makes every output equal; give the blocks a real effect
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    sampler, text = cfg.sampler, torch.randn(2, 5, cfg.arch.text_dim)
    noise = torch.randn(2, 6, 3, 8, 8)
    policy = training_policy(cfg.rollout)
    calls = []
    hook = model.register_forward_hook(lambda m, a, o: calls.append(torch.is_grad_enabled()))
    torch.manual_seed(5)
    got = rollout(model, text, noise, policy, sampler, exit_step=2, grad=True)
    hook.remove()
    assert calls == [False, False, True, False] * 2  # 3 denoising forwards + context pass, per chunk
    assert got.requires_grad

    torch.manual_seed(5)
    ref_backend = BlockCausalAttention(3, incremental=True)
    ts, sig = warped_timesteps(sampler), warped_sigmas(sampler)
    ref = []
    with torch.no_grad():
        for c in range(2):
            x = noise[:, 3 * c:3 * c + 3]
            for i in range(3):
                x0 = flow_to_x0(x, model(x, timestep_tensor(ts[i], 2, 3), text, ref_backend, frame_offset=3 * c),
                                sig[i])
                if i < 2:
                    x = renoise(x0, torch.randn_like(x0), sig[i + 1])
            ref.append(x0)
            model(x0, torch.zeros(2, 3), text, ref_backend, frame_offset=3 * c)
    err = (got.detach() - torch.cat(ref, 1)).abs().max().item()
    assert err < 1e-4, err
    assert (torch.cat(ref, 1) - noise).abs().max() > 0.1  # not trivially equal


def test_training_rollout_equals_runtime_stream_generator(tmp_path):
    """Train as you infer: the rollout (ReferenceCache, fp32) reproduces rfrt.StreamGenerator (RingCache) on
    the exported model with the same noise draws, over 4 chunks (the 4th evicts into the EMA sink)."""
    from rfrt.runtime.generator import StreamGenerator
    from rfrt.text_vocab import VocabTextEncoder
    from train.data.synthetic_world import vocabulary
    from train.stages.common import save_model_dir

    cfg = make_cfg("unused", rollout={"cache": {"window_frames": 9}})
    model = init_dit(dit_config(cfg.arch), 3)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    text = VocabTextEncoder(vocabulary(), cfg.arch.text_dim, cfg.arch.max_words, 1)
    save_model_dir(tmp_path / "model", cfg, model, text)
    policy = cfg.rollout.cache
    assert policy == CachePolicy(sink_frames=3, window_frames=9, chunk_frames=3)
    prompt = "a small red circle moves left on a blue background"
    gen = StreamGenerator(str(tmp_path / "model"))
    gen.reset(prompt, seed=4)
    streamed = torch.cat([gen.step().latents for _ in range(4)])[None]

    noise_gen = torch.Generator().manual_seed(4)
    draws = [[torch.randn(1, 3, 3, 8, 8, generator=noise_gen) for _ in range(4)] for _ in range(4)]
    renoise_draws = iter([d for chunk in draws for d in chunk[1:]])
    with torch.no_grad():
        got = rollout(model, text.encode([prompt]), torch.cat([c[0] for c in draws], 1), policy,
                      cfg.sampler, fresh_noise=lambda like: next(renoise_draws))
    err = (got - streamed).abs().max().item()
    assert err < 1e-4, err


def test_non_default_cache_and_sampler_survive_train_export_generator(pipeline, tmp_path):
    """The manifest is written from the config a model trained with: a DMD student trained with alpha 0.9,
    a 12-frame window and steps (1000, 500) streams with exactly those after train.export_default."""
    from rfrt.runtime.generator import StreamGenerator
    from train.export_default import export_model

    root = pipeline[0]
    run_stage(tmp_path / "dmd", **dmd_sections(root), rollout={"cache": {"window_frames": 12, "sink_ema_alpha": 0.9}},
              sampler={"denoising_steps": [1000, 500]})
    shipped = export_model(tmp_path / "dmd/export", tmp_path / "shipped")
    manifest = yaml.safe_load((shipped / "rfrt.json").read_text())
    assert manifest["cache"]["window_frames"] == 12 and manifest["cache"]["sink_ema_alpha"] == 0.9
    assert manifest["sampler"]["denoising_steps"] == [1000, 500] and manifest["video"]["height"] == 8
    gen = StreamGenerator(str(shipped), device="cpu")
    assert gen.policy == CachePolicy(window_frames=12, sink_ema_alpha=0.9)
    assert gen.sampler.denoising_steps == (1000, 500) and gen.plan.num_steps == 2
    assert (gen.height, gen.width) == (8, 8)
    gen.reset("a small red circle moves left on a blue background", seed=0)
    chunks = [gen.step().latents for _ in range(5)]  # chunk 4 is the first to fold with a 12-frame window
    assert gen.cache.chunk == 4 and all(torch.isfinite(c).all() for c in chunks)
    assert dit_weights(shipped)["head.head.weight"].equal(dit_weights(tmp_path / "dmd/export")["head.head.weight"])


def test_export_keeps_the_continuation_weights_when_only_the_stream_weights_change(pipeline, tmp_path):
    """train.export_default --continuation, then --keep-continuation with a new student: the new DiT weights, the
    same continuation weights; refused where --out has none, or where the new student's DiT differs."""
    from rfrt.model_dir import ModelDirError, load_model_dir
    from train.export_default import main

    root = pipeline[0]
    out = tmp_path / "shipped"
    main(["--student", str(root / "ode/export"), "--out", str(out), "--continuation", str(root / "teacher/export")])
    before = {k: v.clone() for k, v in load_model_dir(out).continuation.items()}
    assert all(torch.equal(before[k], v) for k, v in dit_weights(root / "teacher/export").items())
    run_stage(tmp_path / "dmd", **dmd_sections(root))
    main(["--student", str(tmp_path / "dmd/export"), "--out", str(out), "--keep-continuation"])
    after = load_model_dir(out)
    assert all(torch.equal(before[k], v) for k, v in after.continuation.items())
    assert all(torch.equal(after.dit.state_dict()[k], v) for k, v in dit_weights(tmp_path / "dmd/export").items())
    with pytest.raises(ModelDirError, match="no continuation weights to keep"):
        main(["--student", str(root / "ode/export"), "--out", str(root / "ode/export"), "--keep-continuation"])
    run_stage(tmp_path / "wide", stage={"kind": "teacher"}, arch={"dim": 48})
    with pytest.raises(ModelDirError, match="DiT config differs"):
        main(["--student", str(tmp_path / "wide/export"), "--out", str(out), "--keep-continuation"])


def test_rerun_repairs_an_incomplete_export(pipeline, tmp_path, capsys):
    """A finished run whose export was cut short (truncated weights, no text encoder) is re-exported by the
    next run of the same command instead of reporting nothing to do (reliability review, issue #14 item 3)."""
    from rfrt.model_dir import ModelDirError, verify_model_dir

    run_stage(tmp_path / "t", stage={"kind": "teacher"})
    export = tmp_path / "t/export"
    good = {k: v.clone() for k, v in dit_weights(export).items()}  # loaded tensors may map the file
    weights = export / "dit/model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 3])
    for f in (export / "text_encoder").iterdir():
        f.unlink()
    (export / "text_encoder").rmdir()
    with pytest.raises(ModelDirError):
        verify_model_dir(export)
    _, metrics = run_stage(tmp_path / "t", stage={"kind": "teacher"})
    assert metrics == {}  # nothing left to train: the run only exported
    assert "not a complete export" in capsys.readouterr().err
    verify_model_dir(export)
    assert all(torch.equal(good[k], v) for k, v in dit_weights(export).items())


def test_training_policy_static_sink_by_default():
    """Default: the public trainer's static sink (alpha 1: nothing is ever folded into it) with the inference
    attention set; the option: the inference EMA sink. A 21-frame rollout evicts from chunk 3 in both."""
    cfg = make_cfg("unused", rollout={"num_frames": 21, "cache": {"window_frames": 9}})
    p = training_policy(cfg.rollout)
    assert p.window_frames == 9 and p.sink_ema_alpha == 1.0 and p.evicted_chunk(3) == 1
    ema = training_policy(make_cfg("u", rollout={"num_frames": 21, "cache": {"window_frames": 9, "sink_ema_alpha": 0.9},
                                                 "sink_ema_during_training": True}).rollout)
    assert ema.window_frames == 9 and ema.sink_ema_alpha == 0.9 and ema.evicted_chunk(3) == 1


def test_static_training_sink_is_chunk_zero_throughout():
    """Closed form: after 5 chunks with the static policy the sink still holds chunk 0's context-pass K/V (what
    a 3-chunk rollout leaves there), while the EMA policy has moved it."""
    from rfrt.cache import ReferenceCache
    torch.manual_seed(0)
    cfg = make_cfg("unused", rollout={"num_frames": 15, "cache": {"window_frames": 9}})
    model = init_dit(dit_config(cfg.arch), 3)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    text, noise = torch.randn(1, 5, cfg.arch.text_dim), torch.randn(1, 15, 3, 8, 8)
    sinks = {}
    for ema in (False, True):
        policy = training_policy(make_cfg("u", rollout={"num_frames": 15, "cache": {"window_frames": 9, "sink_ema_alpha": 0.5},
                                                        "sink_ema_during_training": ema}).rollout)
        caches = []
        orig = ReferenceCache.__init__

        def spy(self, *a, **k):
            orig(self, *a, **k)
            caches.append(self)
        ReferenceCache.__init__ = spy
        try:
            with torch.no_grad():
                torch.manual_seed(1)
                rollout(model, text, noise[:, :3], policy, cfg.sampler)
                first = [st.sink_k.clone() for st in caches[-1]._layers] + [st.sink_v.clone() for st in caches[-1]._layers]
                torch.manual_seed(1)
                rollout(model, text, noise, policy, cfg.sampler)
                last = [st.sink_k for st in caches[-1]._layers] + [st.sink_v for st in caches[-1]._layers]
        finally:
            ReferenceCache.__init__ = orig
        sinks[ema] = max((a - b).abs().max().item() for a, b in zip(first, last))
    assert sinks[False] == 0.0 and sinks[True] > 1e-3, sinks


def test_redmd_weight_reaches_gradient_in_closed_form():
    torch.manual_seed(0)
    x = torch.randn(3, 6, 3, 8, 8, requires_grad=True)
    fake, real = torch.randn_like(x), torch.randn_like(x)
    r = torch.tensor([-1.0, 0.0, 0.7])
    grads = {}
    for beta in (0.0, 2.0):
        x.grad = None
        generator_loss(x, fake, real, r, beta)[0].backward()
        grads[beta] = x.grad.clone()
    # independent closed form: dL/dx_i = exp(beta r_i) * g_i / (B * N), g = (fake - real) / mean|x - real|
    g = (fake - real) / (x.detach() - real).abs().mean(dim=(1, 2, 3, 4), keepdim=True)
    expected = torch.exp(2.0 * r).view(3, 1, 1, 1, 1) * g / (3 * x[0].numel())
    torch.testing.assert_close(grads[2.0], expected, rtol=1e-5, atol=1e-9)
    ratio = (grads[2.0] / grads[0.0]).flatten(1)
    torch.testing.assert_close(ratio, torch.exp(2.0 * r)[:, None].expand_as(ratio), rtol=1e-5, atol=0)


class _ConstReward:
    def __init__(self, value):
        self.value = value

    def __call__(self, frames, prompts=None):
        return torch.full((frames.shape[0],), self.value)


def test_redmd_weight_scales_parameter_gradient_end_to_end(pipeline, tmp_path):
    """Through the trainer (rollout, critic, CFG teacher, reward): generator grads scale by exp(beta r)."""
    root = pipeline[0]
    trainer = build_stage(make_cfg(tmp_path / "g", **{**dmd_sections(root), "run": {"batch_size": 1}}),
                          progress=False)
    grads = {}
    for beta, r in ((0.0, 0.0), (2.0, 0.4)):
        trainer.cfg = make_cfg(tmp_path / "g", **{**dmd_sections(root, beta=beta), "run": {"batch_size": 1}})
        trainer.reward = _ConstReward(r)
        trainer.student.zero_grad()
        torch.manual_seed(11)
        loss, _ = trainer.generator_micro(["a small red circle moves left on a blue background"])
        loss.backward()
        grads[beta] = torch.cat([p.grad.flatten() for p in trainer.student.parameters()])
    assert grads[0.0].abs().max() > 0
    scale = grads[0.0].abs().max().item()
    torch.testing.assert_close(grads[2.0], grads[0.0] * torch.exp(torch.tensor(0.8)), rtol=1e-4, atol=1e-6 * scale)
    assert not torch.allclose(grads[2.0], grads[0.0], rtol=1e-2)  # the weight really changed the gradient


def test_bad_configs_and_missing_weights_are_clear(tmp_path):
    with pytest.raises(ConfigError, match="unknown key 'kindd' in section 'stage'"):
        make_cfg(tmp_path, stage={"kindd": "dmd"})
    with pytest.raises(ConfigError, match="stage.kind"):
        make_cfg(tmp_path, stage={"kind": "distill"})
    with pytest.raises(ConfigError, match="arch.dim"):
        make_cfg(tmp_path, arch={"dim": 30, "num_heads": 4})
    with pytest.raises(ValueError, match="model.teacher is not set"):
        build_stage(make_cfg(tmp_path / "a", stage={"kind": "ode"}), progress=False)
    with pytest.raises(FileNotFoundError, match=r"model.student_init=.*nowhere: model directory .* does not exist"):
        build_stage(make_cfg(tmp_path / "b", stage={"kind": "dmd"},
                             model={"student_init": str(tmp_path / "nowhere"), "teacher": str(tmp_path)}),
                    progress=False)
    # FSDP over ranks needs a process group whose backend it runs on (nccl or gloo); here there is none
    with pytest.raises(ConfigError, match=r"run.parallel=fsdp needs .* backend is none"):
        build_stage(make_cfg(tmp_path / "c", run={"parallel": "fsdp"}), DistInfo(rank=0, world_size=2),
                    progress=False)


def test_fsdp_on_one_process_trains_unsharded(tmp_path):
    """run.parallel=fsdp on one process has nothing to shard: it is the plain run, bit for bit."""
    plain, _ = run_stage(tmp_path / "plain", stage={"kind": "teacher"})
    fsdp, _ = run_stage(tmp_path / "fsdp", stage={"kind": "teacher"}, run={"parallel": "fsdp"})
    for (k, a), (_, b) in zip(plain.dit.state_dict().items(), fsdp.dit.state_dict().items()):
        assert torch.equal(a, b), k


def test_grad_checkpointing_is_exact_and_bf16_runs(tmp_path):
    """Recomputing the teacher's forward in backward gives bit-identical weights; bf16 autocast trains."""
    plain, _ = run_stage(tmp_path / "plain", stage={"kind": "teacher"})
    ckpt, _ = run_stage(tmp_path / "ckpt", stage={"kind": "teacher"}, run={"grad_checkpointing": True})
    for (k, a), (_, b) in zip(plain.dit.state_dict().items(), ckpt.dit.state_dict().items()):
        assert torch.equal(a, b), k
    _, metrics = run_stage(tmp_path / "bf16", stage={"kind": "teacher"}, run={"bf16": True, "steps": 1})
    assert torch.isfinite(torch.tensor(metrics["loss"]))


def test_dmd_scores_a_window_of_a_longer_rollout(pipeline, tmp_path):
    """rollout.score_frames: the rollout spans up to num_frames (here 4 chunks of 3 with a 9-frame window, so
    chunk 3 evicts), teacher/critic/reward see a 3-frame window whose start chunk is drawn per rollout, and only
    that window's exit forward carries gradient."""
    root = pipeline[0]
    sections = dmd_sections(root)
    sections["rollout"] = {"num_frames": 12, "score_frames": 3, "sink_ema_during_training": True,
                           "cache": {"window_frames": 9, "sink_ema_alpha": 0.9}}
    trainer, metrics = run_stage(tmp_path / "win", **sections)
    assert torch.isfinite(torch.tensor(metrics["critic_loss"]))
    assert len(trainer.window_starts) == len(trainer.exit_steps) and set(trainer.window_starts) <= {0, 1, 2, 3}
    assert len(set(trainer.window_starts)) > 1
    calls = []
    hook = trainer.student.register_forward_hook(lambda m, a, o: calls.append(torch.is_grad_enabled()))
    torch.manual_seed(11)
    x = trainer._rollout(["a small red circle moves left on a blue background"], grad=True)
    hook.remove()
    w, k = trainer.window_starts[-1], trainer.exit_steps[-1]
    assert x.shape[1] == 3 and x.requires_grad
    per_chunk = k + 2  # k + 1 denoising forwards + the context pass
    assert len(calls) == (w + 1) * per_chunk  # the rollout stops at the window's end
    assert sum(calls) == 1 and calls[w * per_chunk + k]  # the window's exit forward only


def test_regress_stage_trains_on_a_prompt_determined_world(pipeline, tmp_path):
    """The rollout-regression stage: loss finite, weights move; a world with chance is refused."""
    root = pipeline[0]
    world = {"num_frames": 9, "phase": "fixed", "speed_min": 1.0, "speed_max": 1.0, "layout": "canonical"}
    sections = {"stage": {"kind": "regress"}, "model": {"student_init": str(root / "ode/export")},
                "data": world, "rollout": {"num_frames": 9}}
    trainer, metrics = run_stage(tmp_path / "reg", **sections)
    assert torch.isfinite(torch.tensor(metrics["loss"])) and metrics["loss"] > 0
    assert 0 <= metrics["exit_step"] < 4
    ode, student = dit_weights(root / "ode/export"), dit_weights(tmp_path / "reg/export")
    assert max((ode[k] - student[k]).abs().max().item() for k in ode) > 1e-5
    for data in ({**world, "speed_max": 1.5}, {**world, "phase": "random"}, {**world, "layout": "random"}):
        with pytest.raises(ValueError, match="prompt-determined"):
            build_stage(make_cfg(tmp_path / "bad", **{**sections, "data": data}), progress=False)
    # the fixed phase with chance in the speed only: decided by its first 5 frames (deciding_frames)
    chance = {**sections, "data": {**world, "speed_max": 1.5}}
    build_stage(make_cfg(tmp_path / "ok", **{**chance, "stage": {"kind": "regress", "regress_context_frames": 6}}),
                progress=False)
    with pytest.raises(ValueError, match="regress_context_frames >= 5"):
        build_stage(make_cfg(tmp_path / "bad", **{**chance, "stage": {"kind": "regress", "regress_context_frames": 3}}),
                    progress=False)


@pytest.mark.parametrize("anchor_frames, span", [(0, 6), (15, 15)])
def test_regress_anchor_holds_a_fresh_streams_first_chunks_to_the_start(pipeline, tmp_path, anchor_frames, span):
    """stage.regress_anchor_weight: the loss is the continuation's plus weight x the MSE between the student's and
    the frozen start's fresh streams over the context frames (or regress_anchor_frames: here the whole stream),
    from the same draws (recomputed here with the RNG state set by hand); zero while the student is the start,
    and refused without a context or with a span that is not whole chunks of the rollout."""
    root = pipeline[0]
    sections = {"stage": {"kind": "regress", "regress_context_frames": 6, "regress_anchor_weight": 0.5,
                          "regress_anchor_frames": anchor_frames},
                "model": {"student_init": str(root / "ode/export")},
                "data": {"num_frames": 15, "phase": "fixed", "speed_min": 0.5, "speed_max": 1.5,
                         "layout": "canonical"},
                "rollout": {"num_frames": 15, "sink_ema_during_training": True}}
    trainer = build_stage(make_cfg(tmp_path / "anchor", **sections), progress=False)
    video, prompts = trainer.data.next("cpu")
    torch.manual_seed(5)
    trainer.loss(video, prompts)
    assert trainer.parts["anchor_loss"] == 0.0 and trainer.parts["continue_loss"] > 0
    with torch.no_grad():
        for p in trainer.student.parameters():
            p.add_(0.02 * torch.randn_like(p))
    torch.manual_seed(5)
    loss = trainer.loss(video, prompts)
    start = load_dit(root / "ode/export", "start")
    text = trainer.text.encode(prompts)
    torch.manual_seed(5)
    k = int(torch.randint(0, 4, (1,)))
    with torch.no_grad():
        x = rollout(trainer.student, text, torch.randn_like(video), trainer.policy, trainer.cfg.sampler, k,
                    context=video)
        noise = torch.randn_like(video[:, :span])
        state = torch.get_rng_state()
        target = rollout(start, text, noise, trainer.policy, trainer.cfg.sampler, k)
        torch.set_rng_state(state)
        mine = rollout(trainer.student, text, noise, trainer.policy, trainer.cfg.sampler, k)
    cont, held = ((x - video) ** 2)[:, 6:].mean(), ((mine - target) ** 2).mean()
    assert held > 1e-6
    torch.testing.assert_close(loss.detach(), cont + 0.5 * held, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(torch.tensor(trainer.parts["anchor_loss"]), held, rtol=1e-5, atol=1e-8)
    _, metrics = run_stage(tmp_path / "anchor_run", **sections)
    assert metrics["anchor_loss"] >= 0 and torch.isfinite(torch.tensor(metrics["loss"]))
    with pytest.raises(ValueError, match="regress_anchor_weight"):
        make_cfg(tmp_path / "bad", **{**sections, "stage": {"kind": "regress", "regress_anchor_weight": 0.5}})
    for frames in (4, 18):  # not whole chunks; longer than the rollout
        bad = {**sections, "stage": {**sections["stage"], "regress_anchor_frames": frames}}
        with pytest.raises(ValueError, match="regress_anchor_frames"):
            build_stage(make_cfg(tmp_path / f"bad{frames}", **bad), progress=False)


def test_nearest_clip_is_the_worlds_clip_at_the_streams_own_speed_and_start():
    """The clip a fresh stream is regressed on under stage.regress_target "nearest_speed": the world's clip of the
    same scene at the grid speed (and, with shifts, the start shift along the motion) nearest the stream's, against
    the world rendered by hand at that speed and shift."""
    world = world_of(make_cfg(Path("unused")).data, height=16, width=16, num_frames=15, phase="fixed",
                     layout="canonical", speed_min=0.5, speed_max=1.5)
    speeds = [0.5 + 0.1 * i for i in range(11)]
    assert shift_grid(0) == [0.0] and shift_grid(1.0) == [-1.0, -0.5, 0.0, 0.5, 1.0]
    assert shift_grid(0.7) == [-0.5, 0.0, 0.5]  # never past the bound
    movers = [s for s in (world.scene(i) for i in range(40)) if s.objects[0].motion in ("moves", "turns")][:4]
    assert movers
    for scene in movers:
        for true, expect in ((0.9, 0.9), (1.23, 1.2), (0.2, 0.5)):
            stream = render_scene(with_speed(scene, true))
            clip, speed, shift = nearest_clip(scene, stream, 5, speeds)
            assert (speed, shift) == (pytest.approx(expect), 0.0)
            torch.testing.assert_close(clip, render_scene(with_speed(scene, speed)))
        for true_speed, true_shift in ((0.9, 1.0), (1.2, -1.5), (0.5, 2.0)):
            stream = render_scene(with_shift(with_speed(scene, true_speed), true_shift))
            clip, speed, shift = nearest_clip(scene, stream, 5, speeds, shift_grid(2.0))
            assert (speed, shift) == (pytest.approx(true_speed), true_shift)
            torch.testing.assert_close(clip, stream)
            # Without the shifts the best clip at any speed is further from the stream than the shifted truth.
            unshifted, _, _ = nearest_clip(scene, stream, 5, speeds)
            assert ((unshifted - stream) ** 2).mean() > 1e-3


@pytest.mark.parametrize("shift_px, shifts", [(0.0, [0.0]), (1.0, [-1.0, -0.5, 0.0, 0.5, 1.0])])
def test_regress_nearest_speed_regresses_a_fresh_stream_on_its_own_speeds_clip(pipeline, tmp_path, shift_px, shifts):
    """The loss is the MSE of the fresh stream (own context) against nearest_clip of each clip's scene (over the
    speeds, and the start shifts of stage.regress_shift_px), recomputed here from the world's scenes with the RNG
    set by hand; refused where more than the speed is chance, with a context, or shifts without nearest_speed."""
    root = pipeline[0]
    sections = {"stage": {"kind": "regress", "regress_target": "nearest_speed", "regress_context": "own",
                          "regress_shift_px": shift_px},
                "model": {"student_init": str(root / "ode/export")},
                "data": {"num_frames": 15, "phase": "fixed", "speed_min": 0.5, "speed_max": 1.5,
                         "layout": "canonical"},
                "rollout": {"num_frames": 15, "sink_ema_during_training": True}}
    trainer = build_stage(make_cfg(tmp_path / "nearest", **sections), progress=False)
    video, prompts = trainer.data.next("cpu")
    torch.manual_seed(3)
    loss = trainer.loss(video, prompts)
    scenes = [trainer.world.scene(i) for i in range(len(prompts))]  # the first batch: world indices 0..B-1
    assert [describe_scene(s) for s in scenes] == prompts
    torch.manual_seed(3)
    k = int(torch.randint(0, 4, (1,)))
    with torch.no_grad():
        x = rollout(trainer.student, trainer.text.encode(prompts), torch.randn_like(video), trainer.policy,
                    trainer.cfg.sampler, k)
    picked = [nearest_clip(sc, xb, 5, trainer.speeds, shifts) for sc, xb in zip(scenes, x)]
    assert trainer.speeds == pytest.approx([0.5 + 0.1 * i for i in range(11)]) and trainer.shifts == shifts
    target = torch.stack([c for c, _, _ in picked])
    torch.testing.assert_close(loss.detach(), ((x - target) ** 2).mean(), rtol=1e-5, atol=1e-7)
    assert trainer.parts["nearest_speed"] == pytest.approx(sum(v for _, v, _ in picked) / len(picked))
    assert trainer.parts["nearest_shift"] == pytest.approx(sum(abs(d) for _, _, d in picked) / len(picked))
    _, metrics = run_stage(tmp_path / "nearest_run", **sections)
    assert 0.5 <= metrics["nearest_speed"] <= 1.5 and torch.isfinite(torch.tensor(metrics["loss"]))
    assert 0 <= metrics["nearest_shift"] <= shift_px
    with pytest.raises(ValueError, match="only chance is the speed"):
        build_stage(make_cfg(tmp_path / "random", **{**sections, "data": {**sections["data"], "phase": "random"}}),
                    progress=False)
    with pytest.raises(ConfigError, match="regress_target"):
        make_cfg(tmp_path / "ctx", **{**sections, "stage": {**sections["stage"], "regress_context_frames": 6}})
    with pytest.raises(ConfigError, match="regress_shift_px"):
        make_cfg(tmp_path / "shift", **{**sections, "stage": {"kind": "regress", "regress_shift_px": 1.0}})


def test_regress_continuation_is_the_rollouts_loss_past_the_context_frames(pipeline, tmp_path):
    """stage.regress_context_frames 9 on a world with chance (random phase and speed): the loss is the mean
    squared error of a teacher-forced rollout (the inference loop, same RNG draws) against the world's video
    over frames 9.. only; too short a context is refused."""
    root = pipeline[0]
    sections = {"stage": {"kind": "regress", "regress_context_frames": 9},
                "model": {"student_init": str(root / "ode/export")},
                "data": {"num_frames": 15, "phase": "random", "speed_min": 0.5, "speed_max": 1.5},
                "rollout": {"num_frames": 15, "sink_ema_during_training": True}}
    trainer = build_stage(make_cfg(tmp_path / "cont", **sections), progress=False)
    video, prompts = trainer.data.next("cpu")
    torch.manual_seed(5)
    loss = trainer.loss(video, prompts)
    loss.backward()
    torch.manual_seed(5)
    k = int(torch.randint(0, 4, (1,)))
    assert k == trainer.exit_steps[-1]
    with torch.no_grad():
        x = rollout(trainer.student, trainer.text.encode(prompts), torch.randn_like(video), trainer.policy,
                    trainer.cfg.sampler, k, context=video)
    torch.testing.assert_close(loss.detach(), ((x - video) ** 2)[:, 9:].mean(), rtol=1e-5, atol=1e-7)
    assert not torch.allclose(loss.detach(), ((x - video) ** 2).mean())  # the context frames would change it
    _, metrics = run_stage(tmp_path / "cont_run", **sections)
    assert torch.isfinite(torch.tensor(metrics["loss"])) and metrics["loss"] > 0
    for stage, match in (({"regress_context_frames": 6}, "prompt-determined"),
                         ({"regress_context_frames": 10}, "multiple of the chunk"),
                         ({"regress_context_frames": 9, "regress_context": "own"}, "prompt-determined")):
        with pytest.raises(ValueError, match=match):
            build_stage(make_cfg(tmp_path / "bad", **{**sections, "stage": {**sections["stage"], **stage}}),
                        progress=False)


def test_regress_object_weight_weighs_the_targets_object_pixels(pipeline, tmp_path):
    """stage.regress_object_weight w: the continuation loss is the mean of (1 + w [object pixel]) (x0 - video)^2
    over frames 9.. divided by the mean weight, the object pixels being those whose colour is not the scene's
    background (from the world's own scene, not from the video's median as object_mask finds them)."""
    from train.data.synthetic_world import COLOURS

    root = pipeline[0]
    sections = {"stage": {"kind": "regress", "regress_context_frames": 9, "regress_object_weight": 10.0},
                "model": {"student_init": str(root / "ode/export")},
                "data": {"num_frames": 15, "phase": "random", "speed_min": 0.5, "speed_max": 1.5},
                "rollout": {"num_frames": 15, "sink_ema_during_training": True}}
    trainer = build_stage(make_cfg(tmp_path / "obj", **sections), progress=False)
    video, prompts = trainer.data.next("cpu")
    scenes = [trainer.world.scene(i) for i in trainer.data.last_indices()]
    torch.manual_seed(5)
    loss = trainer.loss(video, prompts)
    torch.manual_seed(5)
    k = int(torch.randint(0, 4, (1,)))
    with torch.no_grad():
        x = rollout(trainer.student, trainer.text.encode(prompts), torch.randn_like(video), trainer.policy,
                    trainer.cfg.sampler, k, context=video)
    background = torch.stack([torch.tensor(COLOURS[sc.background]) * 2 - 1 for sc in scenes]).float()
    mask = ((video - background[:, None, :, None, None]).abs() > 1e-3).any(dim=2, keepdim=True)[:, 9:]
    assert 0 < mask.float().mean() < 0.5  # objects are there, and small
    w = 1 + 10.0 * mask.float()
    expected = (w * (x - video)[:, 9:] ** 2).mean() / w.mean()
    torch.testing.assert_close(loss.detach(), expected, rtol=1e-5, atol=1e-7)
    assert not torch.allclose(loss.detach(), ((x - video) ** 2)[:, 9:].mean())  # the weight changes it
    with pytest.raises(ConfigError, match="regress_object_weight"):
        make_cfg(tmp_path / "bad", **{**sections, "stage": {**sections["stage"], "regress_object_weight": -1.0}})


def test_ode_stage_adds_the_continuation_loss_of_the_random_phase_world_and_resumes(pipeline, tmp_path):
    """stage.ode_continue_weight: each step's loss is the pairs' loss plus the weight times the continuation
    loss, recomputed here from the same RNG draws with a teacher-forced rollout (the inference loop) over frames
    9.. of the random-phase world's clips; the continuation's data position resumes exactly."""
    root = pipeline[0]
    sections = {"stage": {"kind": "ode", "ode_teacher": "causal", "ode_attention": "cache", "ode_pairs": 4,
                          "ode_substeps": 4, "ode_continue_weight": 0.5, "regress_context_frames": 9},
                "model": {"teacher": str(root / "ode/export"), "student_init": str(root / "ode/export")},
                "data": {"num_frames": 12, "phase": "fixed"},
                "rollout": {"num_frames": 12, "sink_ema_during_training": True},
                "run": {"steps": 4, "checkpoint_every": 2, "grad_accum": 1}}
    trainer = build_stage(make_cfg(tmp_path / "a", **sections), progress=False)
    replay = build_stage(make_cfg(tmp_path / "b", **sections), progress=False)  # identical weights and data
    torch.manual_seed(7)
    metrics = trainer.train_step(0)
    torch.manual_seed(7)
    with torch.no_grad():
        pairs_loss = replay.loss(torch.randint(0, 4, (2,)))
        video, prompts = replay.continuation.next("cpu")
        k = int(torch.randint(0, 4, (1,)))
        x = rollout(replay.student, replay.text.encode(prompts), torch.randn_like(video),
                    training_policy(replay.cfg.rollout), replay.cfg.sampler, k, context=video)
    cont = ((x - video) ** 2)[:, 9:].mean()
    assert metrics["pairs_loss"] == pytest.approx(pairs_loss.item(), rel=1e-5)
    assert metrics["continue_loss"] == pytest.approx(cont.item(), rel=1e-5)
    assert metrics["loss"] == pytest.approx(pairs_loss.item() + 0.5 * cont.item(), rel=1e-5)
    world = world_of(replay.cfg.data, phase="random", num_frames=12, seed=replay.cfg.data.seed + 104729)
    assert torch.equal(video[0], world[0][0]) and prompts[0] == world[0][1]
    straight, _ = run_stage(tmp_path / "straight", **sections)
    run_stage(tmp_path / "split", **{**sections, "run": {**sections["run"], "steps": 2}})
    resumed, _ = run_stage(tmp_path / "split", **sections)
    assert straight.continuation.state_dict() == resumed.continuation.state_dict()
    a, b = straight.student.state_dict(), resumed.student.state_dict()
    assert all(torch.equal(a[n], b[n]) for n in a)
    short = {**sections, "stage": {**sections["stage"], "regress_context_frames": 6}}
    with pytest.raises(ValueError, match="regress_context_frames >= 9"):
        build_stage(make_cfg(tmp_path / "bad", **short), progress=False)
    with pytest.raises(ConfigError, match="ode_continue_weight"):
        make_cfg(tmp_path / "bad", **{**sections, "stage": {**sections["stage"], "ode_attention": "block_causal"}})


def test_rollout_teacher_forced_context():
    """context=video: the context passes write that video. Fed the rollout's own output it reproduces the plain
    rollout exactly (same noise); a different chunk 0 in the context changes the chunks after it."""
    torch.manual_seed(0)
    cfg = make_cfg("unused")
    model = init_dit(dit_config(cfg.arch), 3)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    text, noise = torch.randn(1, 5, cfg.arch.text_dim), torch.randn(1, 12, 3, 8, 8)
    policy = CachePolicy(sink_frames=3, window_frames=6, chunk_frames=3)
    with torch.no_grad():
        torch.manual_seed(1)
        plain = rollout(model, text, noise, policy, cfg.sampler)
        torch.manual_seed(1)
        forced = rollout(model, text, noise, policy, cfg.sampler, context=plain)
        other = plain.clone()
        other[:, :3] = torch.randn_like(other[:, :3])
        torch.manual_seed(1)
        changed = rollout(model, text, noise, policy, cfg.sampler, context=other)
    assert torch.equal(forced, plain)
    assert torch.equal(changed[:, :3], plain[:, :3]) and (changed[:, 3:] - plain[:, 3:]).abs().max() > 1e-3
