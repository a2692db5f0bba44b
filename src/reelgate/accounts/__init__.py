"""Accounts' money: what a prediction costs (prices.py) and the rules of the balance
(ledger.py). The SQL that moves a balance lives in store/ledger.py."""
