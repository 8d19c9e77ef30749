package signing

import (
	"testing"

	"github.com/stretchr/testify/require"
)

// A memo answers a repeat of a passed check, and nothing else: another
// signature, message or key is verified in full, and a failed check is
// never remembered.
func TestMemoAnswersOnlyRepeats(t *testing.T) {
	k, other := testKey(t, 1), testKey(t, 2)
	pub, otherPub := k.PubKey(), other.PubKey()
	msg := []byte("state at nonce 7")
	sig := k.SignBytes(msg)
	m := NewMemo(8)

	require.NoError(t, m.Verify(pub[:], msg, sig))
	require.Equal(t, 1, m.Len())
	require.NoError(t, m.Verify(pub[:], msg, sig), "a repeat")
	require.Equal(t, 1, m.Len())

	require.ErrorIs(t, m.Verify(pub[:], []byte("state at nonce 8"), sig), ErrMismatch, "same signature, other message")
	require.ErrorIs(t, m.Verify(otherPub[:], msg, sig), ErrMismatch, "same signature, other key")
	forged := append([]byte(nil), sig...)
	forged[10] ^= 1
	require.Error(t, m.Verify(pub[:], msg, forged))
	require.Error(t, m.Verify(pub[:], msg, forged), "a failure is not remembered")
	require.Equal(t, 1, m.Len())

	own := k.SignBytes([]byte("my own tx"))
	m.Remember(pub[:], []byte("my own tx"), own)
	require.NoError(t, m.Verify(pub[:], []byte("my own tx"), own))
	require.Equal(t, 2, m.Len())

	var none *Memo
	require.NoError(t, none.Verify(pub[:], msg, sig), "a nil memo verifies")
	require.ErrorIs(t, none.Verify(otherPub[:], msg, sig), ErrMismatch)
}

// The memo holds at most its limit, forgetting the oldest first.
func TestMemoIsBounded(t *testing.T) {
	k := testKey(t, 3)
	pub := k.PubKey()
	m := NewMemo(3)
	msgs := [][]byte{[]byte("a"), []byte("b"), []byte("c"), []byte("d"), []byte("e")}
	for _, msg := range msgs {
		m.Remember(pub[:], msg, k.SignBytes(msg))
	}
	require.Equal(t, 3, m.Len())
	for i, msg := range msgs {
		ok := m.set.Has(memoKey(pub[:], msg, k.SignBytes(msg)))
		require.Equal(t, i >= 2, ok, "message %q", msg)
	}
}
