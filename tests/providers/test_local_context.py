"""The in-process provider refuses a prompt longer than the model's context before any
forward pass (issue 16, item 7: 34,006 tokens ran >15 minutes and reached 7.2 GB)."""

from __future__ import annotations

from typing import Any

import pytest

from maas_tune.errors import ConfigurationError
from maas_tune.providers.local import ContextLengthExceeded


def test_a_prompt_past_the_context_is_refused_before_the_forward_pass(gemma: Any) -> None:
    limit = gemma.context_length
    assert limit == 32_768

    def no_forward(*_: Any) -> None:  # past the context, a pass costs GBs and minutes
        raise AssertionError("a forward pass started")

    hook = gemma.model.register_forward_pre_hook(no_forward)
    too_long = " the" * limit  # + BOS: one token past the context
    try:
        with pytest.raises(ContextLengthExceeded) as caught:
            gemma.score(["a short one", too_long], ["yes", "no"])
    finally:
        hook.remove()
    # no pass at all: not even the short prompt was scored
    assert isinstance(caught.value, ConfigurationError)
    message = str(caught.value)
    assert f"prompt 1 has {limit + 1} tokens" in message
    assert f"context of {limit} tokens" in message and "shorten" in message
    fits = gemma.score(["a short one"], ["yes", "no"])
    assert fits[0].prompt_tokens > 0
