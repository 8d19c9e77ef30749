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
// Before it runs a model, an executor may be asked to prepare it: to build
// for this machine the artifact it runs from, and write it where the
// worker says. The answer is an output whose prepared field says what was
// written:
//
//	{"id":"8","task":{"kind":"prepare","prepare":{"model":"devshard-test-1","out":"/cache/tmp/a1"}}}
//	{"id":"8","output":{"text":"","usage":{...},"finish_reason":"","prepared":{"bytes":512,"sha256":"..."}}}
//
// The worker keeps artifacts in its own verified cache and names one in
// each inference or validation it sends ("artifact":"/cache/..." beside
// "request"); the executor runs the request from it. A task without an
// artifact runs as it always has.
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
	// KindPrepare builds a model's artifact for this machine.
	KindPrepare Kind = "prepare"
)

// Class says whose fault a failed task is, so the worker knows whether
// another try could succeed, and a validator whether it may vote.
//
// A validation votes against the executor it checks when the re-run
// completed and its answer differs. A validator whose own preparation or
// artifact failed knows nothing of the answer it was to check, so those
// classes are never a vote (DESIGN.md, attack 17).
type Class string

const (
	// ClassBadRequest is input that cannot run on any executor; retrying
	// it elsewhere gives the same answer. It is no vote.
	ClassBadRequest Class = "bad_request"
	// ClassPreparation is a model that cannot be prepared here (an unknown
	// model, a source with the wrong sha256, an output that cannot be
	// written). It is this executor's trouble, never a vote.
	ClassPreparation Class = "preparation"
	// ClassConstruction is an artifact that cannot be loaded or started
	// (corrupt, another format, another model, another machine's CPU
	// features). The worker discards it and prepares it once more; it is
	// never a vote.
	ClassConstruction Class = "construction"
	// ClassExecution is a run that failed (the model server erred, ran out
	// of memory); another try may succeed. It is not a completed re-run,
	// yet the host counts a validation failed so as invalid, as a failed
	// re-run has always voted (host/jobs.go, applyValidation).
	ClassExecution Class = "execution"
)

// Ready is the line a child prints once, when it can take work.
type Ready struct {
	Ready  bool     `json:"ready"`
	Models []string `json:"models"`
}

// Task is one unit of work for an executor: a Request to run (an
// inference or a validation), from the Artifact when one is named, or a
// Preparation.
type Task struct {
	Kind     Kind                  `json:"kind"`
	Request  executor.Request      `json:"request,omitzero"`
	Artifact string                `json:"artifact,omitempty"`
	Prepare  *executor.Preparation `json:"prepare,omitempty"`
}

// Request is a line on the child's stdin.
type Request struct {
	ID   string `json:"id"`
	Task Task   `json:"task"`
}

// Output is a task's finished result: a run's text, or for a prepare task
// what was prepared.
type Output struct {
	Text         string             `json:"text"`
	Usage        executor.Usage     `json:"usage"`
	FinishReason string             `json:"finish_reason"`
	Prepared     *executor.Prepared `json:"prepared,omitempty"`
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
