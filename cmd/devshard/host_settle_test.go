package main

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/devshard/devshard/executor"
	"github.com/devshard/devshard/host"
	"github.com/devshard/devshard/session/sessionpb"
	"github.com/devshard/devshard/session/sessiontest"
	"github.com/devshard/devshard/signing"
	"github.com/devshard/devshard/store/sqlite"
)

// oneEscrow serves a single escrow's snapshot, as the chain would.
type oneEscrow struct{ snap *sessionpb.EscrowSnapshot }

func (o oneEscrow) EscrowSnapshot(_ context.Context, id uint64) (*sessionpb.EscrowSnapshot, error) {
	if id != o.snap.EscrowId {
		return nil, fmt.Errorf("%w: %d", host.ErrUnknownEscrow, id)
	}
	return o.snap, nil
}

// urlBook is where each member serves.
type urlBook map[signing.Address]string

func (b urlBook) PeerURL(_ context.Context, a signing.Address) (string, error) {
	if u, ok := b[a]; ok {
		return u, nil
	}
	return "", fmt.Errorf("no URL for %s", a)
}

// A gateway that crashed while holding diffs leaves the members at
// different nonces. Each member's self-settler catches up from its peers'
// stored diffs and signs its latest root, so the group meets at the latest
// nonce, where every slot has signed one root.
func TestSelfSettlerCatchesUpFromPeers(t *testing.T) {
	t.Parallel()
	f := sessiontest.New(1, sessiontest.DefaultOptions())
	seq := f.Sequencer()
	quiet := slog.New(slog.DiscardHandler)
	book := urlBook{}
	var engines []*host.Engine
	for _, key := range f.Hosts {
		st, err := sqlite.Open(context.Background(), t.TempDir(), sqlite.Options{})
		require.NoError(t, err)
		t.Cleanup(func() { st.Close() })
		e := host.New(host.Config{Key: key, Store: st, Escrows: oneEscrow{f.Snapshot}, Executor: executor.Builtin{}, Logger: quiet})
		e.MarkReady()
		srv := httptest.NewServer(host.Handler(e, "test"))
		t.Cleanup(srv.Close)
		t.Cleanup(e.Wait)
		book[key.Address()] = srv.URL
		engines = append(engines, e)
	}
	var raws [][]byte
	for range 5 {
		d, err := seq.Next()
		require.NoError(t, err)
		raw, err := d.Marshal()
		require.NoError(t, err)
		raws = append(raws, raw)
	}
	id := f.Snapshot.EscrowId
	// What the gateway got out before it died: all five to host 0, three
	// to host 1, two to host 2.
	for i, n := range []int{5, 3, 2} {
		items := make([]host.DiffItem, n)
		for j := range n {
			items[j] = host.DiffItem{Raw: raws[j]}
		}
		_, err := engines[i].ApplyDiffs(t.Context(), id, items)
		require.NoError(t, err)
	}

	settleable := func(e *host.Engine) host.Settleable {
		for _, st := range e.Settleables() {
			if st.Snapshot.EscrowId == id {
				return st
			}
		}
		t.Fatal("escrow not loaded")
		return host.Settleable{}
	}
	root := seq.Replica.Root()
	for _, i := range []int{2, 1, 0} {
		s := &selfSettler{eng: engines[i], urls: book, signer: f.Hosts[i], http: &http.Client{Timeout: 5 * time.Second}, log: quiet, done: map[uint64]bool{}}
		st := s.catchUp(t.Context(), settleable(engines[i]))
		require.Equal(t, uint64(5), st.Settlement.Nonce, "host %d caught up", i)
		require.Equal(t, root[:], st.Settlement.StateRoot, "host %d", i)
	}
	// Every member has signed the one root, and any of them can read the
	// others' signatures.
	s := &selfSettler{eng: engines[1], urls: book, signer: f.Hosts[1], http: &http.Client{Timeout: 5 * time.Second}, log: quiet}
	for i, key := range f.Hosts {
		sigs, err := s.peerSignatures(t.Context(), key.Address(), id, 5)
		require.NoError(t, err)
		require.Len(t, sigs, 1, "host %d signed nonce 5", i)
		require.Equal(t, root[:], sigs[0].StateRoot)
	}
}
