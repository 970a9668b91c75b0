"""train.config: YAML loading, unknown keys, types, ranges, and the two EMA coefficients kept apart."""

import dataclasses

import pytest

from train.config import (ConfigError, DMDSection, EMASection, TrainConfig, config_to_dict, load_config)


def test_defaults_match_spec():
    cfg = load_config(None)
    assert cfg.dmd.min_t == 20 and cfg.dmd.max_t == 980 and cfg.sampler.shift == 5
    assert cfg.dmd.critic_updates_per_generator == 5
    assert cfg.reward.beta == 2.0
    assert cfg.ema.weight_ema_decay == 0.99 and cfg.ema.start_step == 200
    assert cfg.rollout.cache.sink_ema_alpha == 0.999
    assert cfg.optim.betas == (0.0, 0.999) and cfg.optim.weight_decay == 0.01


def test_yaml_roundtrip_and_types(tmp_path):
    path = tmp_path / "c.yaml"
    # "2e-6" without a dot is a *string* to PyYAML; float fields must still accept it.
    path.write_text("optim:\n  lr: 2e-6\n  betas: [0.0, 0.99]\nrun:\n  steps: 7\n  bf16: false\n"
                    "reward:\n  kind: videoreward\n  weights_dir: /x\n")
    cfg = load_config(path)
    assert cfg.optim.lr == 2e-6 and cfg.optim.betas == (0.0, 0.99)
    assert cfg.run.steps == 7 and cfg.run.bf16 is False
    assert cfg.reward.kind == "videoreward"
    assert load_config(config_to_dict(cfg)) == cfg
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.run.steps = 3


@pytest.mark.parametrize("data, needle", [
    ({"run": {"stepz": 3}}, "'stepz' in section 'run'"),
    ({"bogus": {}}, "'bogus' in section '<top level>'"),
    ({"dmd": {"min_t": 990}}, "dmd.min_t/max_t"),
    ({"run": {"steps": 2.5}}, "run.steps"),
    ({"run": {"bf16": 1}}, "run.bf16"),
    ({"reward": {"kind": "clip"}}, "reward.kind"),
    ({"reward": {"kind": "videoreward"}}, "reward.weights_dir"),
    ({"optim": {"betas": [0.9]}}, "optim.betas"),
    ({"optim": {"lr": "fast"}}, "optim.lr"),
    ({"ema": {"weight_ema_decay": 1.5}}, "ema.weight_ema_decay"),
    ({"rollout": {"num_frames": 20}}, "rollout.num_frames"),
    ({"rollout": {"cache": {"sink_frames": 2}}}, "rollout.cache: CachePolicy: sink_frames (2) must equal"),
    ({"rollout": {"cache": {"window_frames": "9"}}}, "rollout.cache.window_frames"),
    ({"sampler": {"denoising_steps": [250, 500]}}, "sampler: SamplerConfig.denoising_steps"),
    ({"sampler": {"num_train_timesteps": 500, "denoising_steps": [500, 250]}},
     "max_t <= sampler.num_train_timesteps=500"),
    ({"rollout": {"window_frames": 9}}, "set rollout.cache.window_frames"),
    ({"rollout": {"denoising_steps": [1000]}}, "set sampler.denoising_steps"),
    ({"dmd": {"shift": 3.0}}, "set sampler.shift"),
])
def test_errors_name_the_problem(data, needle):
    with pytest.raises(ConfigError) as e:
        load_config(data)
    assert needle in str(e.value)


def test_ema_coefficients_not_confused():
    with pytest.raises(ConfigError) as e:
        load_config({"ema": {"sink_ema_alpha": 0.5}})
    assert "rollout.cache" in str(e.value) and "sink_ema_alpha" in str(e.value)
    for section in ({"rollout": {"weight_ema_decay": 0.5}}, {"rollout": {"cache": {"weight_ema_decay": 0.5}}}):
        with pytest.raises(ConfigError) as e:
            load_config(section)
        assert "'ema'" in str(e.value)
    cfg = load_config({"ema": {"weight_ema_decay": 0.9}, "rollout": {"cache": {"sink_ema_alpha": 0.5}}})
    assert cfg.ema.weight_ema_decay == 0.9 and cfg.rollout.cache.sink_ema_alpha == 0.5


def test_load_single_section_class():
    assert load_config({"guidance_scale": 2}, DMDSection).guidance_scale == 2.0
    with pytest.raises(ConfigError):
        EMASection(start_step=-1)
    assert isinstance(load_config({}), TrainConfig)


def test_cache_and_sampler_sections_are_the_runtime_types():
    """rollout.cache loads as rfrt's CachePolicy and sampler as its SamplerConfig: composed, not mirrored."""
    from rfrt.cache import CachePolicy
    from rfrt.sampling import SamplerConfig

    cfg = load_config({"rollout": {"num_frames": 12, "cache": {"window_frames": 12, "sink_ema_alpha": 0.9}},
                       "sampler": {"denoising_steps": [1000, 500], "shift": 3}})
    assert cfg.rollout.cache == CachePolicy(window_frames=12, sink_ema_alpha=0.9)
    assert cfg.sampler == SamplerConfig(denoising_steps=(1000, 500), shift=3.0)
    assert load_config(None).rollout.cache == CachePolicy() and load_config(None).sampler == SamplerConfig()
    assert load_config(config_to_dict(cfg)) == cfg
