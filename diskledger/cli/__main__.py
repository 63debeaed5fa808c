from diskledger.cli import main

if __name__ == "__main__":  # imported by tests that import every module
    raise SystemExit(main())
