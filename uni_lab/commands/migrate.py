"""``uni-lab migrate STORE``: rewrite a store of schema 2 to schema 3 in place (metadata only)."""
from __future__ import annotations

NAME = "migrate"
HELP = ("Rewrite a store of schema 2 (methods dim 'method') to schema 3 (dim 'xai_method') in place; "
        "only metadata changes, and rerunning it finishes an interrupted migration.")


def add_arguments(p):
    p.add_argument("store", help="path of a store written by `uni-lab run` (its --out)")


def main(args) -> int:
    """Exit 0: the store is of schema 3 now (or was already); 2: not a store uni_lab can migrate."""
    from ..migrate import migrate_store
    from ..schema import SCHEMA_VERSION

    done = migrate_store(args.store)
    print({"migrated": f"{args.store}: rewritten to schema {SCHEMA_VERSION} (dim 'method' is now 'xai_method')",
           "finished": f"{args.store}: the interrupted migration is finished; schema {SCHEMA_VERSION}",
           "current": f"{args.store}: already schema {SCHEMA_VERSION}; nothing to do"}[done])
    return 0
