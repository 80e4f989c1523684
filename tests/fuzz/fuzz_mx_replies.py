"""atheris target `mx_replies` of tests/fuzz/targets.py; see tests/fuzz/README.md."""

from runner import main

if __name__ == "__main__":
    main("mx_replies")
