"""The key holders: which key a rotation concerns and its versions. Never sees an identity."""
