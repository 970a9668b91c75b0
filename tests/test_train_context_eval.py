"""train.context_eval on the embedded default model: chunk 0 sees no context (its errors agree exactly), later
chunks see the one they are given (the rows differ)."""
import pytest

from rfrt.model_dir import default_model_path
from test_generator_tiny import one_thread  # noqa: F401 - fixture
from train.context_eval import context_errors, copy_errors

pytestmark = pytest.mark.skipif(default_model_path() is None, reason="the embedded default model is not installed")


def test_chunk_zero_sees_no_context_and_later_chunks_see_theirs(one_thread):
    errs = context_errors(str(default_model_path()), n=4)
    assert set(errs) == {"true", "other", "zeros"} and all(len(e) == 7 for e in errs.values())
    assert errs["true"][0] == errs["other"][0] == errs["zeros"][0]
    for c in range(1, 7):
        assert errs["true"][c] != errs["other"][c] and errs["true"][c] != errs["zeros"][c]


def test_copying_the_last_frame_costs_what_the_motion_moves():
    errs = copy_errors(n=8)
    assert len(errs) == 6 and all(e > 0.01 for e in errs)  # every clip moves (movers, bouncers) or is still
