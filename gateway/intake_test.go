package gateway

import (
	"encoding/json"
	"math/rand"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	dto "github.com/prometheus/client_model/go"
	"github.com/stretchr/testify/require"

	"github.com/devshard/devshard/hostapi"
	"github.com/devshard/devshard/session"
	"github.com/devshard/devshard/session/sessionpb"
	"github.com/devshard/devshard/session/sessiontest"
	"github.com/devshard/devshard/signing"
)

// forgingHost wraps a host's handler so that every diff it answers returns
// extra txs in its mempool, as a lying member would.
func forgingHost(extra func() [][]byte) func(http.Handler) http.Handler {
	return func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method != http.MethodPost || !strings.HasSuffix(r.URL.Path, "/diffs") {
				h.ServeHTTP(w, r)
				return
			}
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, r)
			if rec.Code != http.StatusOK {
				w.WriteHeader(rec.Code)
				_, _ = w.Write(rec.Body.Bytes())
				return
			}
			var resp hostapi.DiffResponse
			if err := json.Unmarshal(rec.Body.Bytes(), &resp); err != nil {
				http.Error(w, err.Error(), http.StatusInternalServerError)
				return
			}
			resp.Mempool = append(resp.Mempool, extra()...)
			w.Header().Set("Content-Type", "application/json")
			_ = json.NewEncoder(w).Encode(resp)
		})
	}
}

// forgedVotes are n Validation txs on inference id in slot's name, signed
// by a key that holds no slot: each one different, none valid.
func forgedVotes(t *testing.T, slot uint32, id uint64, n int) [][]byte {
	t.Helper()
	outsider, err := signing.GenerateKey(rand.New(rand.NewSource(99)))
	require.NoError(t, err)
	out := make([][]byte, 0, n)
	for i := range n {
		hash := make([]byte, 32)
		hash[0], hash[1] = byte(i), byte(i>>8)
		tx := &sessionpb.Tx{Slot: slot, Body: &sessionpb.Tx_Validation{Validation: &sessionpb.Validation{InferenceId: id, Valid: true, ResponseHash: hash}}}
		require.NoError(t, session.SignTx(outsider, sessiontest.ChainID, 7, tx))
		raw, err := tx.Marshal()
		require.NoError(t, err)
		out = append(out, raw)
	}
	return out
}

// forgedTimeouts are n timeout votes in slot's name on inferences from
// 1000 on, signed by a key that holds no slot.
func forgedTimeouts(t *testing.T, slot uint32, n int) [][]byte {
	t.Helper()
	outsider, err := signing.GenerateKey(rand.New(rand.NewSource(98)))
	require.NoError(t, err)
	out := make([][]byte, 0, n)
	for i := range n {
		tx := &sessionpb.Tx{Slot: slot, Body: timeoutVote(uint64(1000 + i)).Body}
		require.NoError(t, session.SignTx(outsider, sessiontest.ChainID, 7, tx))
		raw, err := tx.Marshal()
		require.NoError(t, err)
		out = append(out, raw)
	}
	return out
}

// Item 4 of the review: one member stops a session's sequencer. Host 2
// answers every diff with more forged Validation txs on a finished
// inference than a diff can carry. The gateway pooled whatever passed the
// state check, so every later diff had too many txs and its build failed:
// no request went through the session again.
//
// Checked against the old code (pool after MayInclude only, verification
// errors discarded): the request after the forged answers failed with
// "txs exceed the limit of 1024 per diff".
func TestAttackForgedTxsDoNotStopTheSequencer(t *testing.T) {
	t.Parallel()
	var forging atomic.Bool
	var forged [][]byte
	b := setup(t, func(o *setupOptions) {
		o.config = func(c *Config) { c.HoldFor = -1 } // every member answers every diff at once
		o.wrap = func(i int, h http.Handler) http.Handler {
			if i != 2 {
				return h
			}
			return forgingHost(func() [][]byte {
				if !forging.Load() {
					return nil
				}
				return forged
			})(h)
		}
	})
	// Variants of one vote on inference 1, which the old pool kept apart,
	// and forged votes on inferences that do not exist, each its own.
	forged = append(forgedVotes(t, 0, 1, session.MaxTxsPerDiff+10), forgedTimeouts(t, 0, 100)...)
	c := b.complete(t, ask(0)) // inference 1
	c = b.complete(t, ask(1))  // carries 1's finish: 1 is FINISHED, open to votes
	forging.Store(true)
	c = b.complete(t, ask(2))
	b.waitDelivered(t, c.EscrowID, c.Nonce)
	for i := 3; i < 6; i++ {
		c = b.complete(t, ask(i))
		require.Equal(t, uint64(i+1), c.Nonce)
	}
	e := b.escrowOf(t, c.EscrowID)
	bad := e.out.members[2].addr.String()
	require.GreaterOrEqual(t, dropped(t, b.gw.metrics, bad, string(session.ReasonUnauthorized)), float64(100+1),
		"every forged tx is counted against the host that sent it (the variants of one as one)")
	for i := range 2 {
		require.Zero(t, dropped(t, b.gw.metrics, e.out.members[i].addr.String(), string(session.ReasonUnauthorized)), "honest host %d", i)
	}
}

// dropped reads devshard_gateway_host_txs_dropped_total for host and
// reason.
func dropped(t *testing.T, m *Metrics, host, reason string) float64 {
	t.Helper()
	var out dto.Metric
	require.NoError(t, m.droppedTxs.WithLabelValues(host, reason).Write(&out))
	return out.GetCounter().GetValue()
}

// signedBy marshals tx signed for slot by the fixture's holder of the slot.
func (b *bundle) signedBy(t *testing.T, escrow uint64, slot uint32, tx *sessionpb.Tx) []byte {
	t.Helper()
	tx.Slot = slot
	require.NoError(t, session.SignTx(b.fixture.Hosts[slot], b.fixture.Snapshot.ChainId, escrow, tx))
	raw, err := tx.Marshal()
	require.NoError(t, err)
	return raw
}

func timeoutVote(id uint64) *sessionpb.Tx {
	return &sessionpb.Tx{Body: &sessionpb.Tx_Timeout{Timeout: &sessionpb.TimeoutInference{InferenceId: id}}}
}

// Every tx a host answers is decoded and verified on intake; the bad ones
// are dropped and counted against that host, by reason, and the good ones
// pooled.
func TestBadHostTxsAreCountedAgainstTheirHost(t *testing.T) {
	t.Parallel()
	b := setup(t)
	c := b.complete(t, ask(0))
	e := b.escrowOf(t, c.EscrowID)
	id := e.id()
	good := b.signedBy(t, id, 1, timeoutVote(1))
	foreign := b.signedBy(t, id, 2, timeoutVote(3)) // slot 2's key, claiming slot 1 below
	var stolen sessionpb.Tx
	require.NoError(t, stolen.Unmarshal(foreign))
	stolen.Slot = 1
	stolenRaw, err := stolen.Marshal()
	require.NoError(t, err)
	unsigned, err := (&sessionpb.Tx{Slot: 1, Body: timeoutVote(2).Body}).Marshal()
	require.NoError(t, err)

	e.in.admit(1, [][]byte{
		good,
		append(append([]byte(nil), good...), 0xf8, 0x07, 0x01), // unknown field
		{0xff},      // does not decode
		stolenRaw,   // another host's key
		unsigned,    // no signature
		foreign[:0], // empty: decodes to a tx with no body
	})
	host := e.out.members[1].addr.String()
	for reason, want := range map[session.Reason]float64{
		session.ReasonEncoding:     1,
		session.ReasonMalformed:    2,
		session.ReasonUnauthorized: 1,
		session.ReasonSignature:    1,
	} {
		require.Equal(t, want, dropped(t, b.gw.metrics, host, string(reason)), string(reason))
	}
	e.seq.mu.Lock()
	carried := e.seq.carry()
	e.seq.mu.Unlock()
	want, err := session.DecodeTx(good)
	require.NoError(t, err)
	keys := make([]string, 0, len(carried))
	for _, tx := range carried {
		keys = append(keys, session.TxKey(tx))
	}
	require.Contains(t, keys, session.TxKey(want), "the good tx is pooled")
}

// One host may have at most maxPendingPerHost txs waiting; more are
// dropped and counted, and other hosts' txs still get in. Variants of one
// tx (same kind, slot and inference) take one place: only one can apply.
//
// Checked without the cap (its case in admit disabled): nothing is
// dropped for pending_cap and the test fails; the old pool had no bound.
func TestAttackHostPendingTxsAreCapped(t *testing.T) {
	t.Parallel()
	b := setup(t)
	c := b.complete(t, ask(0))
	e := b.escrowOf(t, c.EscrowID)
	id := e.id()
	var many [][]byte
	for i := range 30 { // variants of one vote: one place
		many = append(many, b.signedBy(t, id, 1, &sessionpb.Tx{Body: &sessionpb.Tx_Validation{Validation: &sessionpb.Validation{InferenceId: 1, Valid: i%2 == 0, ResponseHash: make([]byte, 32-i)}}}))
	}
	for i := range maxPendingPerHost + 40 {
		many = append(many, b.signedBy(t, id, 1, timeoutVote(uint64(1000+i))))
	}
	e.in.mu.Lock()
	before := e.in.waiting[1] // its own txs of inference 1
	e.in.mu.Unlock()
	e.in.admit(1, many)
	e.in.admit(0, [][]byte{b.signedBy(t, id, 0, timeoutVote(1))})
	host := e.out.members[1].addr.String()
	// One variant and maxPendingPerHost-before-1 timeouts get in.
	require.Equal(t, float64(40+1+before), dropped(t, b.gw.metrics, host, "pending_cap"))
	e.in.mu.Lock()
	require.Equal(t, maxPendingPerHost, e.in.waiting[1])
	require.Equal(t, 1, e.in.waiting[0], "another host's tx still gets in")
	e.in.mu.Unlock()

	// Once the state drops them (no such inferences), the host has room.
	e.seq.mu.Lock()
	e.seq.carry()
	e.seq.mu.Unlock()
	e.in.mu.Lock()
	require.Equal(t, before, e.in.waiting[1])
	e.in.mu.Unlock()
}

// Every host tx a diff carries is counted for the holder of its slot and
// its kind, once; the gateway's own starts and finalizes are not. The
// counter lets an operator (and the devnet's proxy test) see a host's
// votes reach the books, not just its answers.
func TestCarriedHostTxsAreCountedByHolderAndKind(t *testing.T) {
	t.Parallel()
	b := setup(t)
	c := b.complete(t, ask(0))
	for i := 1; i < 6; i++ {
		b.complete(t, ask(i))
	}
	e := b.escrowOf(t, c.EscrowID)

	e.seq.mu.Lock() // no diff is published while both are read
	defer e.seq.mu.Unlock()
	diffs, err := e.seq.state.Diffs(t.Context(), e.id(), 1, 1000)
	require.NoError(t, err)
	want := map[[2]string]float64{}
	starts := 0
	for _, sd := range diffs {
		d, err := session.DecodeDiff(sd.Data)
		require.NoError(t, err)
		for _, tx := range d.Txs {
			if kind := session.HostTxKind(tx); kind != "" {
				want[[2]string{e.in.slots[tx.Slot], kind}]++
			}
			if tx.GetStart() != nil {
				starts++
			}
		}
	}
	require.Equal(t, 6, starts, "the test's requests")
	kinds := 0
	for _, m := range e.out.members {
		for _, kind := range []string{"confirm", "finish", "validation", "timeout"} {
			var out dto.Metric
			require.NoError(t, b.gw.metrics.carriedTxs.WithLabelValues(m.addr.String(), kind).Write(&out))
			require.Equal(t, want[[2]string{m.addr.String(), kind}], out.GetCounter().GetValue(), "%s %s", m.addr, kind)
			if out.GetCounter().GetValue() > 0 {
				kinds++
			}
		}
	}
	require.GreaterOrEqual(t, kinds, 2, "confirms and finishes at least")
}
