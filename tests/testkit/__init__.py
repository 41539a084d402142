"""Test-only code that the wheel does not carry: the vendor fakes (``testkit.fakes``), the parser fuzz
harness (``testkit.fuzz``, also run by ``scripts/fuzz.py``) and the toxiproxy-style TCP proxy of the fault
rows (``testkit.fault_proxy``). ``pyproject.toml`` puts ``tests/`` on pytest's ``pythonpath``."""
