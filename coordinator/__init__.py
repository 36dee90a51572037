"""The Parcelo coordinator daemon."""
