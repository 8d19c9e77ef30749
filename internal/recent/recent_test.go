package recent

import (
	"testing"

	"github.com/stretchr/testify/require"
)

func key(b byte) [32]byte { return [32]byte{b} }

// The set holds at most its limit and forgets the oldest key first; adding
// a key it holds changes nothing.
func TestSetForgetsTheOldestFirst(t *testing.T) {
	t.Parallel()
	s := New(3)
	for _, b := range []byte{1, 2, 3, 2} {
		s.Add(key(b))
	}
	require.Equal(t, 3, s.Len())
	s.Add(key(4)) // forgets 1
	require.False(t, s.Has(key(1)))
	for _, b := range []byte{2, 3, 4} {
		require.True(t, s.Has(key(b)), "key %d", b)
	}
	s.Add(key(5)) // forgets 2
	require.False(t, s.Has(key(2)))
	require.True(t, s.Has(key(5)))
	require.Equal(t, 3, s.Len())
	require.Equal(t, 1, New(0).limit, "a limit below 1 holds one key")
}

// KeyOf tells sequences apart by where their parts end, not only by their
// bytes.
func TestKeyOfBindsThePartsBoundaries(t *testing.T) {
	t.Parallel()
	require.NotEqual(t, KeyOf([]byte("ab"), []byte("c")), KeyOf([]byte("a"), []byte("bc")))
	require.NotEqual(t, KeyOf([]byte("abc")), KeyOf([]byte("abc"), nil))
	require.Equal(t, KeyOf([]byte("a"), []byte("b")), KeyOf([]byte("a"), []byte("b")))
}
