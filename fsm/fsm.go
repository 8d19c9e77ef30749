// Package fsm is a small finite state machine: states, symbols, a transition
// table with optional actions, and final states.
//
// A Table is built once and is safe for concurrent use; it holds no current
// state. Callers keep the state themselves (the chain keeps it in the store)
// and ask the table for the next one, or use a Machine to hold it in memory.
//
// The rules the table enforces:
//   - Consuming a symbol in a state with no transition for it is a
//     *TransitionError that names both.
//   - A final state accepts no symbol at all.
//   - An action that fails leaves the state where it was; the action's error
//     comes back wrapped in an *ActionError.
package fsm

import (
	"errors"
	"fmt"
)

// ErrNoTransition matches every *TransitionError with errors.Is.
var ErrNoTransition = errors.New("no transition")

// TransitionError reports a symbol that the current state does not accept.
// State and Symbol hold the caller's values, so their String methods (if any)
// format the message.
type TransitionError struct {
	State  any
	Symbol any
	// Final is set when State is final: it accepts nothing, not just not this.
	Final bool
}

func (e *TransitionError) Error() string {
	if e.Final {
		return fmt.Sprintf("state %v is final and accepts no symbol (got %v)", e.State, e.Symbol)
	}
	return fmt.Sprintf("no transition from state %v on symbol %v", e.State, e.Symbol)
}

// Is makes errors.Is(err, ErrNoTransition) true.
func (e *TransitionError) Is(target error) bool { return target == ErrNoTransition }

// ActionError wraps the error of a failed action. The state stays From.
type ActionError struct {
	From, Symbol, To any
	Err              error
}

func (e *ActionError) Error() string {
	return fmt.Sprintf("%v --%v--> %v: action failed, state stays %v: %v", e.From, e.Symbol, e.To, e.From, e.Err)
}

func (e *ActionError) Unwrap() error { return e.Err }

// Action runs when a transition fires, before the new state is taken. env is
// whatever the caller passes to Fire: a context, the record being moved.
type Action[S any, E any] func(env E, from, to S) error

// Transition is one row of the table: in state From, symbol On moves to To,
// running Action (which may be nil) first.
type Transition[S, Y comparable, E any] struct {
	From   S
	On     Y
	To     S
	Action Action[S, E]
}

type edge[S, Y comparable] struct {
	from S
	on   Y
}

// Table is an immutable transition table.
type Table[S, Y comparable, E any] struct {
	rows   []Transition[S, Y, E]
	index  map[edge[S, Y]]int
	finals map[S]bool
}

// New builds a table. It rejects two rows for the same (state, symbol) and any
// row leaving a final state, since either would make the table say two things.
func New[S, Y comparable, E any](finals []S, rows ...Transition[S, Y, E]) (*Table[S, Y, E], error) {
	t := &Table[S, Y, E]{
		rows:   append([]Transition[S, Y, E](nil), rows...),
		index:  make(map[edge[S, Y]]int, len(rows)),
		finals: make(map[S]bool, len(finals)),
	}
	for _, s := range finals {
		t.finals[s] = true
	}
	for i, r := range rows {
		if t.finals[r.From] {
			return nil, fmt.Errorf("transition %v --%v--> %v leaves final state %v", r.From, r.On, r.To, r.From)
		}
		k := edge[S, Y]{r.From, r.On}
		if j, dup := t.index[k]; dup {
			return nil, fmt.Errorf("state %v has two transitions on symbol %v (to %v and to %v)", r.From, r.On, rows[j].To, r.To)
		}
		t.index[k] = i
	}
	return t, nil
}

// MustNew is New for tables fixed at compile time; it panics on a bad table.
func MustNew[S, Y comparable, E any](finals []S, rows ...Transition[S, Y, E]) *Table[S, Y, E] {
	t, err := New(finals, rows...)
	if err != nil {
		panic(err)
	}
	return t
}

// IsFinal reports whether s is a final state.
func (t *Table[S, Y, E]) IsFinal(s S) bool { return t.finals[s] }

// Next returns the state that symbol on leads to from state, without running
// any action. It returns a *TransitionError if there is none.
func (t *Table[S, Y, E]) Next(state S, on Y) (S, error) {
	r, err := t.row(state, on)
	if err != nil {
		return state, err
	}
	return r.To, nil
}

// Fire consumes symbol on in state: it runs the row's action with env and
// returns the new state. On any error it returns state unchanged.
func (t *Table[S, Y, E]) Fire(env E, state S, on Y) (S, error) {
	r, err := t.row(state, on)
	if err != nil {
		return state, err
	}
	if r.Action != nil {
		if err := r.Action(env, r.From, r.To); err != nil {
			return state, &ActionError{From: r.From, Symbol: r.On, To: r.To, Err: err}
		}
	}
	return r.To, nil
}

// Transitions returns the rows in the order they were given, for listing the
// table (docs, tests).
func (t *Table[S, Y, E]) Transitions() []Transition[S, Y, E] {
	return append([]Transition[S, Y, E](nil), t.rows...)
}

func (t *Table[S, Y, E]) row(state S, on Y) (Transition[S, Y, E], error) {
	if t.finals[state] {
		return Transition[S, Y, E]{}, &TransitionError{State: state, Symbol: on, Final: true}
	}
	i, ok := t.index[edge[S, Y]{state, on}]
	if !ok {
		return Transition[S, Y, E]{}, &TransitionError{State: state, Symbol: on}
	}
	return t.rows[i], nil
}

// Machine is one instance of a table with its current state held in memory.
// It is not safe for concurrent use.
type Machine[S, Y comparable, E any] struct {
	table *Table[S, Y, E]
	state S
}

// Start returns a machine in state initial.
func (t *Table[S, Y, E]) Start(initial S) *Machine[S, Y, E] {
	return &Machine[S, Y, E]{table: t, state: initial}
}

// State is the current state.
func (m *Machine[S, Y, E]) State() S { return m.state }

// Fire consumes on. The state changes only if it returns nil.
func (m *Machine[S, Y, E]) Fire(env E, on Y) error {
	next, err := m.table.Fire(env, m.state, on)
	if err != nil {
		return err
	}
	m.state = next
	return nil
}
