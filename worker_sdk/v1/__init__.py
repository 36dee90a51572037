"""Generated protobuf and gRPC stubs of parcelo.v1 (do not edit; run make proto)."""
