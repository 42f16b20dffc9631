"""Operations: the control socket, status, metrics and key export, reading the gateway through a view."""
