"""``python -m gateway.ledger writer FD``: the ledger's writer process
(``gateway.ledger.writer_process``), started by the gateway on its end of a socket pair."""

from __future__ import annotations

import sys

from gateway.ledger.writer_process import main

if __name__ == "__main__":
    if sys.argv[1:2] != ["writer"] or len(sys.argv) != 3:
        sys.exit("usage: python -m gateway.ledger writer FD (started by the gateway)")
    main(int(sys.argv[2]))
