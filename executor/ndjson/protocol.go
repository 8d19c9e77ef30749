// Package ndjson is the wire protocol between a worker and an executor
// child process, and the serving side of it.
//
// The child speaks newline-delimited JSON: one object per line. When it can
// take work it prints a ready line on stdout:
//
//	{"ready":true,"models":["devshard-test-1"]}
//
// Requests then arrive on its stdin, one a line:
//
//	{"id":"7","task":{"kind":"inference","request":{...executor.Request...}}}
//
// For each request it prints zero or more pieces and exactly one final line,
// an output or an error, all carrying the request's id:
//
//	{"id":"7","piece":" the"}
//	{"id":"7","output":{"text":"...","usage":{"prompt_tokens":9,"completion_tokens":12},"finish_reason":"stop"}}
//	{"id":"7","error":"max_tokens must be positive, got 0","class":"bad_request"}
//
// Requests run concurrently inside the child, so the answers of several
// requests interleave; a reader routes them by id. Readers ignore fields
// they do not know, so either side may add some.
package ndjson

import (
	"github.com/devshard/devshard/executor"
)

// Kind is what a task asks of an executor.
type Kind string

const (
	// KindInference runs a request for a client and streams its answer.
	KindInference Kind = "inference"
	// KindValidation re-runs a request another host answered, to compare.
	KindValidation Kind = "validation"
)

// Class says whose fault a failed task is, so the worker knows whether
// another try could succeed.
type Class string

const (
	// ClassBadRequest is input that cannot run on any executor; retrying
	// it elsewhere gives the same answer.
	ClassBadRequest Class = "bad_request"
	// ClassExecution is a run that failed (the model server erred, ran out
	// of memory); another try may succeed.
	ClassExecution Class = "execution"
)

// Ready is the line a child prints once, when it can take work.
type Ready struct {
	Ready  bool     `json:"ready"`
	Models []string `json:"models"`
}

// Task is one unit of work for an executor.
type Task struct {
	Kind    Kind             `json:"kind"`
	Request executor.Request `json:"request"`
}

// Request is a line on the child's stdin.
type Request struct {
	ID   string `json:"id"`
	Task Task   `json:"task"`
}

// Output is a task's finished result.
type Output struct {
	Text         string         `json:"text"`
	Usage        executor.Usage `json:"usage"`
	FinishReason string         `json:"finish_reason"`
}

// Answer is a line on the child's stdout after the ready line: a piece of
// text (Piece set), or the final line of the request, an Output or an
// Error with its Class. Piece is a pointer so that an empty piece is still
// a piece and a line with none of the three is recognisably malformed.
type Answer struct {
	ID     string  `json:"id"`
	Piece  *string `json:"piece,omitempty"`
	Output *Output `json:"output,omitempty"`
	Error  string  `json:"error,omitempty"`
	Class  Class   `json:"class,omitempty"`
}

// Final reports whether a is the last line of its request.
func (a *Answer) Final() bool { return a.Output != nil || a.Error != "" }
