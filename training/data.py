"""Load the Titanic data and pin down the model's input schema.

The built-in data set is the OpenML Titanic (id 40945) that ships inside the
scikit-learn wheel as a test fixture, so training needs no network. Users can
bring their own CSV or Parquet file instead (``--data``); either way the
returned ``X`` holds only the columns the model uses, in a fixed order, so the
schema blackbox captures at save time is exactly the model's input.
"""

from __future__ import annotations

import gzip
import io
import re
from pathlib import Path

import pandas as pd

TARGET = "survived"
#: Feature columns every data source must provide, in the order X has them.
REQUIRED_FEATURES: tuple[str, ...] = ("pclass", "sex", "age", "sibsp", "parch", "fare", "embarked")
#: Feature columns used when present: ``name`` enables the title feature.
OPTIONAL_FEATURES: tuple[str, ...] = ("name",)
#: Columns that must hold numbers (they are imputed, scaled or summed).
NUMERIC_FEATURES: tuple[str, ...] = ("pclass", "age", "sibsp", "parch", "fare")

#: Where the built-in data came from, as recorded in the artifact.
BUILTIN_SOURCE = "sklearn:openml/40945 (titanic, shipped in scikit-learn)"
_BUILTIN_RELPATH = Path("datasets/tests/data/openml/id_40945/data-v1-dl-16826755.arff.gz")

_ATTRIBUTE = re.compile(r"^@attribute\s+(?:'([^']*)'|\"([^\"]*)\"|(\S+))\s", re.IGNORECASE)


class DataError(ValueError):
    """The training data cannot be used: unreadable, wrong format or missing columns."""


def builtin_titanic_path() -> Path:
    """Path of the Titanic ARFF file inside the installed scikit-learn package."""
    import sklearn

    return Path(sklearn.__file__).parent / _BUILTIN_RELPATH


def read_arff(path: str | Path) -> pd.DataFrame:
    """Read a (optionally gzipped) ARFF file with a small, dependency-free reader.

    Column names come from the ``@attribute`` lines; the ``@data`` section is
    CSV with double-quoted strings and ``?`` for missing. Only ``?`` becomes
    NaN (``keep_default_na=False``), so a passenger called "NA" stays a string.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as fh:
        text = fh.read()
    names: list[str] = []
    lines = text.splitlines()
    for i, line in enumerate(lines):
        stripped = line.strip()
        match = _ATTRIBUTE.match(stripped)
        if match:
            names.append(next(g for g in match.groups() if g is not None))
        elif stripped.lower() == "@data":
            # ARFF comments are whole lines starting with "%"; drop them here
            # rather than via read_csv(comment=...), which would also cut a
            # "%" inside a quoted string.
            body = "\n".join(ln for ln in lines[i + 1 :] if not ln.lstrip().startswith("%"))
            break
    else:
        raise DataError(f"{path}: no @data section, not an ARFF file")
    if not names:
        raise DataError(f"{path}: no @attribute lines, not an ARFF file")
    return pd.read_csv(
        io.StringIO(body),
        header=None,
        names=names,
        quotechar='"',
        na_values=["?"],
        keep_default_na=False,
        skip_blank_lines=True,
    )


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a user's CSV or Parquet file (or an ARFF like the built-in data), chosen by extension.

    Raises :class:`DataError` for a missing or unreadable file and for any
    other extension, so the command can report it in one line.
    """
    path = Path(path)
    suffix = ".arff" if path.name.lower().endswith((".arff", ".arff.gz")) else path.suffix.lower()
    readers = {".csv": pd.read_csv, ".parquet": pd.read_parquet, ".pq": pd.read_parquet, ".arff": read_arff}
    if suffix not in readers:
        raise DataError(
            f"{path}: unsupported file type {suffix or '(no extension)'!r}; "
            "expected a .csv, .parquet or .arff(.gz) file"
        )
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        return readers[suffix](path)
    except Exception as exc:  # pandas/pyarrow raise many types; all mean "unreadable"
        kind = {".csv": "CSV", ".arff": "ARFF"}.get(suffix, "Parquet")
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"{path}: cannot read as {kind}: {first_line}") from exc


def split_features_target(df: pd.DataFrame, source: str) -> tuple[pd.DataFrame, pd.Series]:
    """Keep only the model's columns, check their types, and separate the label.

    Everything else is dropped on purpose: ``boat`` and ``body`` (OpenML) and
    ``alive`` (Kaggle/seaborn) leak the label; ``ticket``/``cabin`` are unused.
    """
    missing = [c for c in (TARGET, *REQUIRED_FEATURES) if c not in df.columns]
    if missing:
        raise DataError(
            f"{source}: missing required column(s) {', '.join(missing)}; expected "
            f"{TARGET} (0/1 target) and {', '.join(REQUIRED_FEATURES)} "
            f"(optional: {', '.join(OPTIONAL_FEATURES)})"
        )
    features = [*REQUIRED_FEATURES, *(c for c in OPTIONAL_FEATURES if c in df.columns)]
    X = df[features].copy()
    for col in NUMERIC_FEATURES:
        try:
            X[col] = pd.to_numeric(X[col])
        except (TypeError, ValueError) as exc:
            raise DataError(f"{source}: column {col!r} must be numeric ({exc})") from exc

    y = pd.to_numeric(df[TARGET], errors="coerce")
    if y.isna().any() or not y.isin([0, 1]).all():
        raise DataError(f"{source}: column {TARGET!r} must hold only 0 and 1, with no missing values")
    if y.nunique() < 2:
        raise DataError(f"{source}: column {TARGET!r} has a single class; need both 0 and 1")
    return X.reset_index(drop=True), y.astype("int64").rename(TARGET).reset_index(drop=True)


def load_titanic() -> tuple[pd.DataFrame, pd.Series]:
    """The built-in Titanic: 1309 passengers from the ARFF file inside scikit-learn."""
    path = builtin_titanic_path()
    if not path.is_file():
        raise DataError(f"built-in Titanic data not found at {path} (scikit-learn wheel without tests?)")
    return split_features_target(read_arff(path), BUILTIN_SOURCE)


def load_csv_or_parquet(path: str | Path) -> tuple[pd.DataFrame, pd.Series]:
    """A user's own Titanic-like CSV or Parquet file, reduced to the model's columns."""
    return split_features_target(read_table(path), str(path))


def load_data(path: str | Path | None = None) -> tuple[pd.DataFrame, pd.Series, str]:
    """Load ``path`` (CSV/Parquet) or, if None, the built-in Titanic.

    Returns ``(X, y, data_source)``; ``data_source`` says where the data came
    from, for the artifact's metadata.
    """
    if path is None:
        X, y = load_titanic()
        return X, y, BUILTIN_SOURCE
    X, y = load_csv_or_parquet(path)
    return X, y, str(Path(path).resolve())
