"""State shared by several replicas through Redis (`--redis-url`): the connection, and the Redis-backed
forms of the audio cache, the voice library and the speech-job queue. Unset, none of it is imported."""
