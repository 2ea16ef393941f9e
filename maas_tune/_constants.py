"""Named constants: schema versions, defaults and bounds used across the package."""

from __future__ import annotations

#: Version of the cache key / value layout; bump to invalidate every cached answer.
CACHE_SCHEMA_VERSION = 1
#: Version of the SQLite schema (cache + budget tables).
DB_SCHEMA_VERSION = 1
#: Version of the saved-decoder format (safetensors + JSON).
DECODER_FORMAT_VERSION = 1

#: Environment variable that overrides the user cache directory.
ENV_CACHE_DIR = "MAAS_TUNE_CACHE_DIR"
#: File name of the default store inside the cache directory.
DEFAULT_DB_NAME = "maas-tune.sqlite"
#: SQLite busy timeout in seconds: how long a writer waits for the lock.
SQLITE_BUSY_TIMEOUT_S = 60.0
#: How many keys go into one ``SELECT ... IN (...)`` when reading the cache.
CACHE_READ_CHUNK = 500
#: Longest record (one JSON Lines line, or one CSV field) a data file may hold, in
#: characters: some 32k tokens, past any prompt worth paying for; it is also the limit
#: of Python's csv module, so that both formats refuse the same records.
MAX_RECORD_CHARS = 131_072

#: Default budget name used by the CLI.
DEFAULT_BUDGET_NAME = "default"

#: Default batch size of the in-process transformers provider.
LOCAL_BATCH_SIZE = 16
#: Most prompt tokens the in-process provider packs into one forward pass (past ~512 the
#: attention over the packed row costs more than padding saves on 2 CPU cores).
LOCAL_PACK_TOKENS = 512
#: Name under which the embedded default model is known.
DEFAULT_MODEL_NAME = "gemma-3-270m"

#: Input used for contextual calibration (Zhao et al. 2021 use "N/A").
CONTENT_FREE_TEXT = "N/A"

#: Prefix put before every label word when it is appended to the prompt.
LABEL_WORD_PREFIX = " "

# -- HTTP retries (openai-python's shape) ------------------------------------
#: Retries after the first attempt (so at most ``MAX_RETRIES + 1`` requests per call).
MAX_RETRIES = 4
#: Backoff before the first retry when the server gives no Retry-After, in seconds.
INITIAL_RETRY_DELAY_S = 0.5
#: Cap on the exponential backoff, in seconds.
MAX_RETRY_DELAY_S = 8.0
#: Cap on a server-requested Retry-After, in seconds: longer waits are shortened to this.
MAX_RETRY_AFTER_S = 60.0
#: Fraction of the backoff that jitter may remove (delay lies in ``[(1 - f) * d, d]``).
RETRY_JITTER_FRACTION = 0.25
#: HTTP statuses worth retrying: timeout, conflict, rate limit and transient server errors.
RETRYABLE_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})
