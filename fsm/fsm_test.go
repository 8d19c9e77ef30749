package fsm_test

import (
	"errors"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/devshard/devshard/fsm"
)

type state string
type symbol string

const (
	closed state = "CLOSED"
	open   state = "OPEN"
	locked state = "LOCKED"
	gone   state = "GONE" // final
)

var (
	states  = []state{closed, open, locked, gone}
	symbols = []symbol{"open", "close", "lock", "unlock", "remove"}
)

// log records which actions ran, so tests can see that a row's action fired.
type log struct{ ran []string }

func record(name string) fsm.Action[state, *log] {
	return func(l *log, _, _ state) error {
		l.ran = append(l.ran, name)
		return nil
	}
}

func door(t *testing.T) *fsm.Table[state, symbol, *log] {
	t.Helper()
	tbl, err := fsm.New([]state{gone},
		fsm.Transition[state, symbol, *log]{From: closed, On: "open", To: open, Action: record("opened")},
		fsm.Transition[state, symbol, *log]{From: open, On: "close", To: closed},
		fsm.Transition[state, symbol, *log]{From: closed, On: "lock", To: locked, Action: record("locked")},
		fsm.Transition[state, symbol, *log]{From: locked, On: "unlock", To: closed},
		fsm.Transition[state, symbol, *log]{From: closed, On: "remove", To: gone},
		fsm.Transition[state, symbol, *log]{From: open, On: "remove", To: gone},
	)
	require.NoError(t, err)
	return tbl
}

func TestEveryLegalTransition(t *testing.T) {
	t.Parallel()
	tbl := door(t)
	for _, row := range tbl.Transitions() {
		l := &log{}
		got, err := tbl.Fire(l, row.From, row.On)
		require.NoError(t, err, "%s --%s-->", row.From, row.On)
		require.Equal(t, row.To, got)
		next, err := tbl.Next(row.From, row.On)
		require.NoError(t, err)
		require.Equal(t, row.To, next)
		if row.Action != nil {
			require.Len(t, l.ran, 1)
		} else {
			require.Empty(t, l.ran)
		}
	}
}

func TestEveryIllegalTransitionNamesStateAndSymbol(t *testing.T) {
	t.Parallel()
	tbl := door(t)
	legal := map[[2]string]bool{}
	for _, row := range tbl.Transitions() {
		legal[[2]string{string(row.From), string(row.On)}] = true
	}
	for _, s := range states {
		for _, y := range symbols {
			if legal[[2]string{string(s), string(y)}] {
				continue
			}
			l := &log{}
			got, err := tbl.Fire(l, s, y)
			require.Error(t, err, "%s on %s must be rejected", s, y)
			require.Equal(t, s, got, "a rejected symbol leaves the state")
			require.Empty(t, l.ran, "no action runs for a rejected symbol")
			require.ErrorIs(t, err, fsm.ErrNoTransition)
			var te *fsm.TransitionError
			require.ErrorAs(t, err, &te)
			require.Equal(t, s, te.State)
			require.Equal(t, y, te.Symbol)
			require.Equal(t, s == gone, te.Final)
			require.Contains(t, err.Error(), string(s))
			require.Contains(t, err.Error(), string(y))
		}
	}
}

func TestFinalStateAcceptsNothing(t *testing.T) {
	t.Parallel()
	tbl := door(t)
	require.True(t, tbl.IsFinal(gone))
	require.False(t, tbl.IsFinal(closed))
	for _, y := range symbols {
		_, err := tbl.Next(gone, y)
		var te *fsm.TransitionError
		require.ErrorAs(t, err, &te)
		require.True(t, te.Final)
		require.EqualError(t, err, "state GONE is final and accepts no symbol (got "+string(y)+")")
	}
}

func TestFailingActionLeavesStateUnchanged(t *testing.T) {
	t.Parallel()
	boom := errors.New("disk full")
	tbl, err := fsm.New[state, symbol, *log](nil,
		fsm.Transition[state, symbol, *log]{From: closed, On: "open", To: open, Action: func(*log, state, state) error { return boom }},
	)
	require.NoError(t, err)

	got, err := tbl.Fire(&log{}, closed, "open")
	require.Equal(t, closed, got)
	require.ErrorIs(t, err, boom)
	var ae *fsm.ActionError
	require.ErrorAs(t, err, &ae)
	require.Equal(t, closed, ae.From)
	require.Equal(t, open, ae.To)
	require.Equal(t, symbol("open"), ae.Symbol)

	m := tbl.Start(closed)
	require.ErrorIs(t, m.Fire(&log{}, "open"), boom)
	require.Equal(t, closed, m.State())
}

func TestMachineWalksThePath(t *testing.T) {
	t.Parallel()
	m := door(t).Start(closed)
	l := &log{}
	for _, y := range []symbol{"open", "close", "lock", "unlock", "remove"} {
		require.NoError(t, m.Fire(l, y))
	}
	require.Equal(t, gone, m.State())
	require.Equal(t, []string{"opened", "locked"}, l.ran)
	require.ErrorIs(t, m.Fire(l, "open"), fsm.ErrNoTransition)
	require.Equal(t, gone, m.State())
}

func TestNewRejectsAmbiguousTables(t *testing.T) {
	t.Parallel()
	_, err := fsm.New[state, symbol, *log](nil,
		fsm.Transition[state, symbol, *log]{From: closed, On: "open", To: open},
		fsm.Transition[state, symbol, *log]{From: closed, On: "open", To: locked},
	)
	require.EqualError(t, err, "state CLOSED has two transitions on symbol open (to OPEN and to LOCKED)")

	_, err = fsm.New([]state{gone},
		fsm.Transition[state, symbol, *log]{From: gone, On: "open", To: open},
	)
	require.EqualError(t, err, "transition GONE --open--> OPEN leaves final state GONE")

	require.Panics(t, func() {
		fsm.MustNew([]state{gone}, fsm.Transition[state, symbol, *log]{From: gone, On: "open", To: open})
	})
}
