package ring

// PauseHeartbeats makes r stop heartbeating while it keeps gossiping, the
// way a hung ingester looks to the others.
func PauseHeartbeats(r *Ring) { r.heartbeatsPaused.Store(true) }
