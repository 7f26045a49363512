"""onepass: one-pass hyperparameter tuning by implicit differentiation."""
