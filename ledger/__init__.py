"""The consent and suppression ledger: pure core (identity, policy, tokens, retention) and stores."""
