"""One IKE exchange per module (after strongSwan's tasks): each builds its requests and answers, and
processes what comes back, changing the IKE SA only through tunnel.ike.sa and tunnel.ike.child. Which
request goes out next is the engine's decision (tunnel.ike.session), so no task imports another."""
