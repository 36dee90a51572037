"""Parcelo: parcel out huge numeric ranges to workers over gRPC."""
