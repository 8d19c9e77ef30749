package chainclient

import "sync/atomic"

// EpochQueries counts the CurrentEpoch queries c sent.
func EpochQueries(c *Client) *atomic.Int64 { return &c.epochQueries }
