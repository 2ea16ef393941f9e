"""Named constants: schema versions, defaults and bounds used across the package."""

from __future__ import annotations

#: Version of the cache key / value layout; bump to invalidate every cached answer.
CACHE_SCHEMA_VERSION = 1
#: Version of the store schema (cache, budget and claim tables), on SQLite and PostgreSQL
#: alike; ``storage/migrations.py`` holds one step per version and upgrades older stores.
DB_SCHEMA_VERSION = 5
#: Version of the saved-decoder format (safetensors + JSON).
DECODER_FORMAT_VERSION = 1

#: Environment variable that overrides the user cache directory.
ENV_CACHE_DIR = "MAAS_TUNE_CACHE_DIR"
#: File name of the default store inside the cache directory.
DEFAULT_DB_NAME = "maas-tune.sqlite"
#: SQLite busy timeout in seconds: how long a writer waits for the lock, and how long
#: opening a store keeps trying to switch the file to WAL while another opener does.
SQLITE_BUSY_TIMEOUT_S = 60.0
#: PostgreSQL ``lock_timeout`` in seconds: how long a statement waits for a row lock
#: (the counterpart of the SQLite busy timeout).
POSTGRES_LOCK_TIMEOUT_S = 60.0
#: Seconds to wait for a PostgreSQL server to accept a connection.
POSTGRES_CONNECT_TIMEOUT_S = 10
#: Seconds a budget reservation is held before any worker may count it as spent: a worker
#: on another host cannot be checked for liveness, so its reservation expires instead.
#: Longer than any request with its retries; a late commit still corrects the ledger.
RESERVATION_LEASE_S = 900.0
#: Seconds a reservation reclaimed for an expired lease is kept for its holder to settle
#: (and correct the counters); past that the holder is not coming back.
RECLAIMED_KEEP_S = 7 * 86_400.0
#: Seconds a worker's claim on a prompt it is sending holds off other workers; past it the
#: worker is presumed dead and another one sends the prompt.
CLAIM_LEASE_S = 300.0
#: First and longest pause, in seconds, of a client waiting for prompts another worker is
#: sending (the pause doubles in between).
CLAIM_POLL_S, CLAIM_POLL_MAX_S = 0.05, 1.0
#: How many keys go into one ``SELECT ... IN (...)`` when reading the cache.
CACHE_READ_CHUNK = 500
#: Longest record (one JSON Lines line, or one CSV field) a data file may hold, in
#: characters: some 32k tokens, past any prompt worth paying for; it is also the limit
#: of Python's csv module, so that both formats refuse the same records.
MAX_RECORD_CHARS = 131_072

#: Output tokens counted per scoring request when pricing it: a request asks for at most
#: one answer token (``max_tokens=1``; 0 for the server extension and echo).
OUTPUT_TOKENS_PER_QUERY = 1

#: Default budget name used by the CLI.
DEFAULT_BUDGET_NAME = "default"

#: Default batch size of the in-process transformers provider.
LOCAL_BATCH_SIZE = 16
#: Most prompt tokens the in-process provider packs into one forward pass (past ~512 the
#: attention over the packed row costs more than padding saves on 2 CPU cores).
LOCAL_PACK_TOKENS = 512
#: Prompt tokens whose last-layer states a caller asks for with ``token_features=N`` when
#: it names no number (Y-Tuning's keys): the prompts' tails, where the input and the
#: template's question sit (an SST-2 prompt of the bundled template is ~30 tokens).
DEFAULT_TOKEN_FEATURES = 32
#: Most tokens' states one answer may carry (a bound on ``token_features=N``: 512 tokens
#: of a 640-wide model are 640 kB of float16 per cached answer).
MAX_TOKEN_FEATURES = 512
#: Name under which the embedded default model is known.
DEFAULT_MODEL_NAME = "gemma-3-270m"

#: Input used for contextual calibration (Zhao et al. 2021 use "N/A").
CONTENT_FREE_TEXT = "N/A"

#: Default (and hosted-API maximum) number of top log-probs asked per request over HTTP.
DEFAULT_TOP_LOGPROBS = 5

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

#: Seconds a cancelled run (Ctrl-C) gives its tasks to finish what they were doing (a
#: commit of what was answered) before it cancels them again and exits.
CANCEL_GRACE_S = 5.0
