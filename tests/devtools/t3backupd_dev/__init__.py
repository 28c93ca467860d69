"""Developer tools for t3backupd; never installed on a production host.

`t3backupd_dev.sampledb` makes T3-shaped state databases, simulates the live app and
checks copies; `t3backupd_dev.demo` is `make demo`. Standard library only: the tests
run them as unprivileged users with `python -I -m t3backupd_dev...` from `cwd="/"`.
"""
