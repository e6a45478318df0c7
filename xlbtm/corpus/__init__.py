"""The jsonl corpus: file discovery (`files`), the streaming reader (`reader`), sp_ids (`sp_ids`), random
access by sp_id (`index`) and the data dir as a whole (`data_dir`). Import from here.

Layout (c-BTM / X-ELM): `<data>/train/<shard>/*.jsonl[.gz]` and `<data>/valid[/<subset>]/*.jsonl[.gz]`.
One JSON object per line with `text` (str, required) and optional `id`, `lang`, `url`.

A document's `sp_id` is `"<path relative to the data dir>|<0-based line index>"`, e.g.
`train/00000/manpages.jsonl|17`. c-BTM wrote absolute paths there; `resolve_sp_id` accepts those too.

Errors name `path:line` with a 1-based line number (what an editor shows); sp_ids use the 0-based index
(what c-BTM uses). Blank lines count as lines, so sp_ids never shift when a line is skipped.
"""

from xlbtm.corpus.data_dir import Corpus, split_stats  # noqa: F401  (the package's API)
from xlbtm.corpus.files import find_jsonl_files, natural_key, relative_name, split_files  # noqa: F401
from xlbtm.corpus.index import LineIndex  # noqa: F401
from xlbtm.corpus.reader import PARALLEL_SIDES, Document, Pair, ReadStats, iter_file, iter_pairs  # noqa: F401
from xlbtm.corpus.sp_ids import parse_sp_id, resolve_sp_id  # noqa: F401
