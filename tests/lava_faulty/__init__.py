"""Test-only Lava Process that misbehaves on purpose (imported as
``lava_faulty`` with ``tests/`` on sys.path)."""
