//go:build race

package hybrid_test

// raceBuild: the race detector slows the copy of outage tails into
// Postgres far more than the local appends, so load tests pace their
// writers under it.
const raceBuild = true
