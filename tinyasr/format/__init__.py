"""The .tasr model file: container (reader / writer), graph IR, weight encodings; spec in docs/format.md."""
