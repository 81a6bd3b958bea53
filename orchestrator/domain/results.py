"""What every result carries, whoever computed it and whoever reads it."""

# The metrics a task's summary carries (in its `completed` event and its projection), and every
# row of a sweep's table: what a list of results is read by. Every metric is in the full result;
# the log keeps each task small. Total return (%), annualised Sharpe ratio, maximum drawdown
# (%, negative), win rate (% of closed trades), number of closed trades, final equity (account
# currency).
HEADLINE_METRICS = ("return_pct", "sharpe", "max_drawdown_pct", "win_rate_pct", "num_trades", "equity_final")
