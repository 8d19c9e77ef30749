package types

import "context"

// Handler runs a due task. It runs in a branch of the block's state: if it
// returns an error (or panics) everything it wrote is discarded and the task
// is retried, so a handler never needs to undo its own partial writes.
//
// The error's text is stored with the task and so becomes part of consensus
// state: it must be deterministic (no map order, pointers or wall-clock time).
type Handler func(ctx context.Context, task Task) error

// TaskDefinition registers a task type: its name, its handler, and the types
// whose due tasks must run before its own within the same block.
type TaskDefinition struct {
	Name      string
	DependsOn []string
	Handler   Handler
}

// NewTask is a request to schedule one task.
type NewTask struct {
	Type string
	// DueHeight is the block at whose end the task runs. It may be the current
	// block (the task then runs at this block's end, or at the next block's
	// end when scheduled from within a running task).
	DueHeight int64
	// Period, when positive, makes the task recur every Period blocks.
	Period  int64
	Payload []byte
}
