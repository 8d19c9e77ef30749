// Package session is the devshard session protocol: applying diffs, the state
// root, deterministic sealing, signatures and settlement verification.
//
// It is pure. It does no I/O, reads no clock, starts no goroutines and logs
// nothing, so the chain keeper, the host and the gateway can all call it and
// agree byte for byte. The rules it enforces are those of DESIGN.md ("Session
// state and the root", "Settlement rules", "Invariants"); the byte layouts it
// hashes and signs are documented in docs/protocol.md and pinned by the golden
// vectors in testdata/.
//
// A Session is not safe for concurrent use; callers serialize access to it.
package session
