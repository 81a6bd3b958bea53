"""The backtest engine: datasets, strategies, kernel, metrics, sweeps and the chunked runner."""
