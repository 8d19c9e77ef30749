package jobs

import (
	"testing"

	"github.com/stretchr/testify/require"
)

func woken(w *waiter) (wakeCall, bool) {
	select {
	case c := <-w.ch:
		return c, true
	default:
		return wakeCall{}, false
	}
}

// One enqueue wakes the oldest waiter that takes its kind; passed on, the
// wake goes to the next such waiter that was waiting at the enqueue, and
// then to none: a waiter that registered after it (one that looked again)
// is not woken, so a wake cannot go round for ever.
func TestWakeGoesToOneWaiterAndIsPassedOnOnce(t *testing.T) {
	t.Parallel()
	var ws wakeups
	a := ws.add([]Kind{"inference:h"})
	other := ws.add([]Kind{KindValidation})
	b := ws.add(nil) // any kind
	ws.one("inference:h", "job1")

	c, ok := woken(a)
	require.True(t, ok, "the oldest waiter of the kind is woken")
	_, ok = woken(b)
	require.False(t, ok, "one enqueue wakes one waiter")

	a2 := ws.add([]Kind{"inference:h"}) // a looks again after losing
	ws.pass(c)
	_, ok = woken(other)
	require.False(t, ok, "a waiter of another kind is skipped")
	c, ok = woken(b)
	require.True(t, ok, "the wake is passed to the next waiter")

	ws.pass(c)
	_, ok = woken(a2)
	require.False(t, ok, "a waiter that came after the enqueue is not woken by it")
	require.Len(t, ws.waiting, 2, "other and a2 still wait")
}

// A waiter that leaves hands back the wake it got, and a wake to all
// is not passed on.
func TestWakeRemoveAndAll(t *testing.T) {
	t.Parallel()
	var ws wakeups
	a := ws.add(nil)
	b := ws.add(nil)
	ws.one(KindValidation, "job1")
	c, ok := ws.remove(a)
	require.True(t, ok, "leaving, a finds its wake")
	ws.pass(c)
	_, ok = woken(b)
	require.True(t, ok)

	x := ws.add(nil)
	y := ws.add(nil)
	ws.all()
	cx, ok := woken(x)
	require.True(t, ok)
	_, ok = woken(y)
	require.True(t, ok)
	z := ws.add(nil)
	ws.pass(cx)
	_, ok = woken(z)
	require.False(t, ok, "everyone had the wake to all")
	_, ok = ws.remove(z)
	require.False(t, ok)
	require.Empty(t, ws.waiting)
}
