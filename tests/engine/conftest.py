"""Engine fixtures: a catalog of the bundled data plus a user directory holding backtesting.py's
GOOG sample and a synthetic series that bankrupts a short position."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from backtesting.test import GOOG
from bt_oracle import write_csv

from consumers.engine.datasets import Catalog


def rocket_frame() -> pd.DataFrame:
    """A rise, then a decline (so crossover systems go short), then an overnight gap to over six times
    the price: a short with all equity is wiped out before any signal can close it."""
    n = 160
    rng = np.random.default_rng(7)
    path = np.concatenate([np.linspace(100, 120, 40), np.linspace(120, 60, 60), np.linspace(400, 460, 60)])
    close = np.round(path * (1 + rng.normal(0, 0.004, n)), 2)
    open_ = np.round(np.concatenate([[100.0], close[:-1]]) * (1 + rng.normal(0, 0.002, n)), 2)
    high = np.maximum(open_, close) + 0.5
    low = np.minimum(open_, close) - 0.5
    return pd.DataFrame(
        {"Open": open_, "High": high, "Low": low, "Close": close, "Volume": 1000.0},
        index=pd.bdate_range("2015-01-05", periods=n),
    )


@pytest.fixture(scope="session")
def user_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("userdata")
    write_csv(GOOG, d / "GOOGBT.csv")
    write_csv(rocket_frame(), d / "ROCKET.csv")
    return d


@pytest.fixture(scope="session")
def catalog(user_dir: Path) -> Catalog:
    return Catalog.from_env_dir(str(user_dir))
