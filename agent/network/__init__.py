"""Container networking: bridge-mode network namespaces, address allocation, published ports and the
firewall rules behind them (``manager.NetworkManager`` is the entry point)."""
