"""``python -m pagedlm ...`` is the ``pagedlm`` command."""

from pagedlm.entrypoints.cli import main

if __name__ == "__main__":
    main()
