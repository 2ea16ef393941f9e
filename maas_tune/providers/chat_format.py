"""How a task's rendered prompt becomes chat messages that ask for exactly one label word."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigurationError

__all__ = ["DEFAULT_INSTRUCTION", "DEFAULT_SYSTEM", "ChatFormat"]

#: Default system message.
DEFAULT_SYSTEM = (
    "You are a text classifier. Reply with exactly one of the allowed words and nothing else."
)
#: Default instruction put before the rendered prompt; ``{choices}`` lists the label words.
DEFAULT_INSTRUCTION = "Classify the text. Answer with one word: {choices}."
#: Placeholder of the instruction filled with the label words.
CHOICES_PLACEHOLDER = "{choices}"


@dataclass(frozen=True)
class ChatFormat:
    """A system message and a user message built from a task's rendered prompt.

    The user message is ``instruction`` (with ``{choices}`` replaced by the label words,
    comma-separated, in task order), a blank line, then the prompt exactly as the
    task's template renders it (e.g. ``"Review: ...\\nSentiment:"``). The label word is
    expected as the first token of the assistant's answer.

    Parameters
    ----------
    system : str, default :data:`DEFAULT_SYSTEM`
        The system message; an empty string sends none.
    instruction : str, default :data:`DEFAULT_INSTRUCTION`
        Must contain ``{choices}`` exactly once; no other braces are interpreted.

    Raises
    ------
    ConfigurationError
        If ``instruction`` does not contain ``{choices}`` exactly once.

    Examples
    --------
    >>> ChatFormat().messages("Review: great.\\nSentiment:", ["negative", "positive"])[1]
    {'role': 'user', 'content': 'Classify the text. Answer with one word: negative, \
positive.\\n\\nReview: great.\\nSentiment:'}
    """

    system: str = DEFAULT_SYSTEM
    instruction: str = DEFAULT_INSTRUCTION

    def __post_init__(self) -> None:
        if not isinstance(self.system, str):
            raise ConfigurationError(f"system must be a string, got {self.system!r}")
        if not isinstance(self.instruction, str) or (
            self.instruction.count(CHOICES_PLACEHOLDER) != 1
        ):
            raise ConfigurationError(
                f"instruction must be a string containing {CHOICES_PLACEHOLDER} exactly once "
                f"(where the label words go), got {self.instruction!r}"
            )

    def user_message(self, prompt: str, words: Sequence[str]) -> str:
        """The user message for a rendered ``prompt`` and the task's label ``words``."""
        instruction = self.instruction.replace(CHOICES_PLACEHOLDER, ", ".join(words))
        return f"{instruction}\n\n{prompt}"

    def messages(self, prompt: str, words: Sequence[str]) -> list[dict[str, str]]:
        """The chat messages: ``[system,] user`` as OpenAI-style ``{role, content}`` dicts."""
        user = {"role": "user", "content": self.user_message(prompt, words)}
        return [{"role": "system", "content": self.system}, user] if self.system else [user]

    def fingerprint(self) -> dict[str, Any]:
        """JSON-serialisable identity (goes into cache keys through the provider's)."""
        return {"system": self.system, "instruction": self.instruction}
