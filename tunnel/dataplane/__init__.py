"""Pure data path: the forwarder, its queues and the packet edits. Bytes in, bytes and events out."""
