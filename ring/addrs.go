package ring

// HasInstanceAt reports whether an instance of the ring, in any state but
// LEFT, has the address addr: whether a connection to addr may still be
// used. Client pools evict the others.
func (r *Ring) HasInstanceAt(addr string) bool {
	s := r.snap.Load()
	for i := range s.instances {
		if s.instances[i].Addr == addr && s.instances[i].State != LEFT {
			return true
		}
	}
	return false
}
