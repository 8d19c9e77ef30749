package host

import (
	"fmt"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/devshard/devshard/executor"
	"github.com/devshard/devshard/hostapi"
	"github.com/devshard/devshard/session"
	"github.com/devshard/devshard/session/sessionpb"
	"github.com/devshard/devshard/session/sessiontest"
)

// victim is the slot a censoring gateway picks on: host 1 of four, one
// slot in four, so the other three hold the quorum without it.
const victim = 1

func fourHosts(o *sessiontest.Options) { o.Holders = []int{0, 1, 2, 3} }

// censor plays a gateway that carries every member's pooled txs except the
// victim's: its ConfirmStart and FinishInference never get in.
func (b *hostBundle) censor(resps []hostapi.DiffResponse) []*sessionpb.Tx {
	seen := map[string]bool{}
	var out []*sessionpb.Tx
	for _, r := range resps {
		for _, raw := range r.Mempool {
			var tx sessionpb.Tx
			if tx.Unmarshal(raw) != nil || tx.Slot == victim {
				continue
			}
			k := session.TxKey(&tx)
			if seen[k] {
				continue
			}
			seen[k] = true
			// Only what still applies: two of three timeout votes decide.
			if _, err := b.gw.Build(append(out, &tx)...); err == nil {
				out = append(out, &tx)
			}
		}
	}
	return out
}

// settlement is the gateway's replica settled with the state signatures
// resps carried, and the slots that signed.
func (b *hostBundle) settlement(t *testing.T, resps []hostapi.DiffResponse) (*sessionpb.Settlement, []uint32) {
	t.Helper()
	m := b.gw.Replica.Settlement()
	var slots []uint32
	for _, r := range resps {
		for _, raw := range r.Signatures {
			var ss sessionpb.StateSignature
			require.NoError(t, ss.Unmarshal(raw))
			m.Signatures = append(m.Signatures, &sessionpb.SlotSignature{Slot: ss.Slot, Sig: ss.Sig})
			slots = append(slots, ss.Slot)
		}
	}
	return m, slots
}

// censorScript plays the censoring gateway against four real hosts that
// gossip: it starts inference 1 on the victim's slot, takes its answer, and
// never carries the victim's txs, while it carries everyone else's. The
// victim re-gossips them at nonce 6; then the peers' clocks pass the
// execution timeout. It stops at nonce 12, with the diff that starts
// inference 13 (the victim's slot again) next.
func censorScript(t *testing.T) (b *hostBundle, confirm, finish *sessionpb.Tx, resps []hostapi.DiffResponse) {
	t.Helper()
	b, _ = gossipSetup(t, fourHosts)
	req := request(1)
	resps = b.next(t, map[uint64]executor.Request{1: req}, startTx(1, req))
	status, events, body := b.infer(t, victim, 1, req)
	require.Equal(t, http.StatusOK, status, body)
	require.True(t, events[len(events)-1].Done, "the gateway has its answer")
	txs := decodeTxs(t, events[len(events)-1].Txs)
	confirm, finish = txs[0], txs[1]
	b.tick() // the peers see inference 1 open from now
	for b.gw.Replica.Nonce() < 6 {
		resps = b.next(t, nil, b.censor(resps)...)
	}
	b.tick() // the victim's txs have waited 5 nonces: re-gossiped
	for _, i := range []int{0, 2, 3} {
		pool := b.pooled(t, i)
		require.True(t, holds(pool, confirm), "host %d holds the victim's confirm", i)
		require.True(t, holds(pool, finish), "host %d holds the victim's finish", i)
	}
	b.now = b.now.Add(2 * time.Minute) // past the 60 s execution timeout
	b.tick()
	for b.gw.Replica.Nonce() < 12 {
		resps = b.next(t, nil, b.censor(resps)...)
		b.tick()
	}
	return b, confirm, finish, resps
}

// noTimeoutVotes checks that no host offers a timeout vote on inference id.
func (b *hostBundle) noTimeoutVotes(t *testing.T, id uint64) {
	t.Helper()
	for i := range b.hosts {
		for _, tx := range b.pooled(t, i) {
			require.False(t, tx.GetTimeout() != nil && txID(tx) == id, "host %d offers a timeout vote on inference %d", i, id)
		}
	}
}

// Issue item 5, first half: honest peers holding the victim's proof do not
// vote it out. A censoring gateway started inference 1 on the victim's
// slot, took the answer and never carried the victim's ConfirmStart and
// FinishInference; the victim re-gossiped them. Past the execution timeout
// the peers hold both, so they cast no timeout vote, and the victim is not
// charged a missed inference for the gateway's censorship. Checked to fail
// before the fix: on the old voteTimeouts the three peers voted, the gateway
// carried two votes, and the victim ended with missed = 1.
func TestAttackCensorCannotTimeOutAVictimWhosePeersHoldItsFinish(t *testing.T) {
	t.Parallel()
	b, _, _, _ := censorScript(t)
	require.Equal(t, sessionpb.InferenceStatus_INFERENCE_STATUS_PENDING, b.status(t, 1))
	b.noTimeoutVotes(t, 1)
	stats := b.gw.Replica.State().HostStats[victim]
	require.Zero(t, stats.Missed, "the victim is not timed out")
}

// Issue item 5, second half: a gateway that censors one member loses the
// quorum of the members its txs reached. The peers took the victim's txs
// by gossip at nonce 6; once those have waited more than the seal grace (8
// nonces) there, every peer withholds its signature, as the victim does
// already, so no root past that point can be settled without the victim's
// work. When the gateway carries the txs, all sign again and the victim is
// paid. Checked to fail before the fix: on the old code the peers voted the
// victim out, so it had nothing left to withhold over; and with only the old
// own-txs rule of overdue put back, hosts 0, 2 and 3 kept signing.
func TestAttackCensorLosesTheQuorumOfPeersHoldingTheVictimsTxs(t *testing.T) {
	t.Parallel()
	b, confirm, finish, resps := censorScript(t)
	require.Contains(t, resps[victim].Withheld, "own tx for inference 1 (slot 1) has waited 11 nonces for inclusion, more than the grace of 8")
	for _, i := range []int{0, 2, 3} {
		require.NotEmpty(t, resps[i].Signatures, "host %d: the victim's txs have waited 6 nonces here, within the grace", i)
	}
	for b.gw.Replica.Nonce() < 15 {
		resps = b.next(t, nil, b.censor(resps)...)
	}
	for _, i := range []int{0, 2, 3} {
		require.Empty(t, resps[i].Signatures, "host %d withholds", i)
		require.Contains(t, resps[i].Withheld, "slot 1's confirm for inference 1, taken by gossip, has waited 9 nonces here for inclusion, more than the grace of 8", "host %d", i)
	}
	m, slots := b.settlement(t, resps)
	require.Empty(t, slots)
	_, err := session.VerifySettlement(b.f.Snapshot, m, nil)
	require.ErrorIs(t, err, session.ReasonQuorum, "no settlement without the victim's work")

	// The gateway gives in: every member signs again, and the work is paid.
	resps = b.next(t, nil, confirm, finish)
	for i := range b.hosts {
		require.NotEmpty(t, resps[i].Signatures, "host %d signs once the victim's txs are in", i)
		require.Empty(t, resps[i].Withheld, "host %d", i)
	}
	require.Equal(t, uint64(1), b.gw.Replica.State().HostStats[victim].Finished)
	m, _ = b.settlement(t, resps)
	_, err = session.VerifySettlement(b.f.Snapshot, m, nil)
	require.NoError(t, err)
}

// Issue item 5: the victim stops working for a gateway that does not carry
// its txs. With its own confirm overdue past the seal grace, it starts no
// run beside the diff that assigns it inference 13, refuses the gateway's
// inference request with 409 and the reason, and counts the refusal; the
// peers, holding its uncarried work, do not vote the refused inference out;
// once its txs are carried it executes again. Checked to fail before the
// fix: the old host ran inference 13 and streamed it (200); and with the
// peers asking only for the proof of the inference itself (the first
// version of this fix), hosts 0, 2 and 3 voted inference 13 out.
func TestAttackCensoredExecutorStopsRunning(t *testing.T) {
	t.Parallel()
	b, confirm, finish, resps := censorScript(t)
	for len(b.executors[victim].called) > 0 {
		<-b.executors[victim].called
	}
	req := request(13)
	resps = b.next(t, map[uint64]executor.Request{13: req}, append(b.censor(resps), startTx(13, req))...)
	status, _, body := b.infer(t, victim, 13, req)
	require.Equal(t, http.StatusConflict, status, body)
	require.Contains(t, body, "inference 13 of escrow 7 is not run: this host's own confirm for inference 1 (slot 1) has waited 12 nonces for inclusion, more than the grace of 8")
	require.Empty(t, b.executors[victim].called, "the victim's model never ran inference 13")
	require.Contains(t, b.metrics(t, victim), "devshard_host_executions_refused_total 1")
	// The peers hold the victim's uncarried work: its refusal is the
	// gateway's doing, so they do not vote inference 13 out either.
	b.tick()
	b.now = b.now.Add(2 * time.Minute)
	b.tick()
	b.noTimeoutVotes(t, 13)

	// Carried: the victim works again, on its next inference.
	b.next(t, nil, append(b.censor(resps), confirm, finish)...)
	for b.gw.Replica.Nonce() < 16 {
		b.next(t, nil)
	}
	req = request(17)
	b.next(t, map[uint64]executor.Request{17: req}, startTx(17, req))
	status, _, body = b.infer(t, victim, 17, req)
	require.Equal(t, http.StatusOK, status, body)
}

// metrics scrapes host i's /metrics.
func (b *hostBundle) metrics(t *testing.T, i int) string {
	t.Helper()
	resp, err := http.Get(b.urls[i] + "/metrics")
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return string(body)
}

// startOnVictim starts inference 1 on the victim's slot and has the victim
// run it; it returns the victim's confirm and finish, which the gateway
// then never carries.
func (b *hostBundle) startOnVictim(t *testing.T) (confirm, finish *sessionpb.Tx) {
	t.Helper()
	req := request(1)
	b.next(t, map[uint64]executor.Request{1: req}, startTx(1, req))
	status, events, body := b.infer(t, victim, 1, req)
	require.Equal(t, http.StatusOK, status, body)
	txs := decodeTxs(t, events[len(events)-1].Txs)
	return txs[0], txs[1]
}

// Issue item 5, with a gateway that slows down instead: it sends no diff
// after the one that started the victim's inference, so nonce-based
// re-gossip never comes due. The victim pushes its txs once they have
// waited half the execution timeout by its clock, before the peers' clocks
// reach the timeout, and so the peers cast no timeout vote. Checked to fail
// before the fix: with re-gossip counted in nonces only, the peers held
// nothing and each voted the victim out.
func TestAttackSlowCensorCannotTimeOutTheVictim(t *testing.T) {
	t.Parallel()
	b, _ := gossipSetup(t, fourHosts)
	confirm, finish := b.startOnVictim(t)
	b.tick() // the peers see inference 1 open from now
	b.now = b.now.Add(29 * time.Second)
	b.tick()
	require.False(t, holds(b.pooled(t, 0), confirm), "not pushed before half the timeout")
	b.now = b.now.Add(time.Second)
	b.tick()
	for _, i := range []int{0, 2, 3} {
		pool := b.pooled(t, i)
		require.True(t, holds(pool, confirm), "host %d", i)
		require.True(t, holds(pool, finish), "host %d", i)
	}
	b.now = b.now.Add(2 * time.Minute)
	b.tick()
	b.noTimeoutVotes(t, 1)
}

// Issue item 5: a peer that voted before the victim's proof reached it
// (the push failed: the peer was unreachable) takes its vote off offer
// once the proof arrives, so a censoring gateway cannot collect it later.
// Checked to fail with withdrawTimeouts made a no-op: host 2 kept offering
// its vote (and on the old code, which pushed by nonces only, no proof
// reached any peer).
func TestAttackTimeoutVoteWithdrawnWhenTheProofArrives(t *testing.T) {
	t.Parallel()
	b, book := gossipSetup(t, fourHosts)
	late := b.hosts[2].Address()
	book.setDown(late, true)
	confirm, _ := b.startOnVictim(t)
	b.tick()
	b.now = b.now.Add(30 * time.Second)
	b.tick() // the victim's push reaches hosts 0 and 3, not host 2
	b.now = b.now.Add(time.Minute)
	b.tick()
	require.True(t, holds(b.pooled(t, 2), b.f.Timeout(2, 1)), "host 2 voted: it held no proof")
	for _, i := range []int{0, 3} {
		require.False(t, holds(b.pooled(t, i), b.f.Timeout(uint32(i), 1)), "host %d held the proof", i)
	}

	book.setDown(late, false)
	b.tick() // the push reaches host 2
	require.True(t, holds(b.pooled(t, 2), confirm))
	b.tick()
	b.noTimeoutVotes(t, 1)
}

// Only txs the next diff could carry hold the group up. A member's
// finish gossiped without its confirm, and a confirm signed for a slot that
// is not the executor's, pass the gossip route's signature check, but no
// diff can carry them: the peers keep signing, and the lone finish does not
// keep them from timing the inference out. Checked against two mutants:
// withholding over MayInclude's answer instead of CheckHostTx's (host 0
// withholds), and taking any pooled finish as proof without asking whether
// it applies (host 0 casts no vote).
func TestGossipedTxsThatCannotApplyHoldNothingUp(t *testing.T) {
	t.Parallel()
	b := setup(t)
	req := request(1)
	b.next(t, map[uint64]executor.Request{1: req}, startTx(1, req)) // slot 1 executes; it never runs
	lone := b.f.Finish(1, 1, 6, 20)
	wrongSlot := b.f.Confirm(2, 1, 5)
	for _, tx := range []*sessionpb.Tx{lone, wrongSlot} {
		raw, err := tx.Marshal()
		require.NoError(t, err)
		status, body := signedPost(t, fmt.Sprintf("%s/v1/sessions/%d/gossip", b.urls[0], b.f.Snapshot.EscrowId), b.f.SlotKey(1), to(b.hosts[0].Address()), hostapi.GossipRequest{Tx: raw})
		require.Equal(t, http.StatusAccepted, status, string(body))
	}
	require.True(t, holds(b.pooled(t, 0), lone))
	require.True(t, holds(b.pooled(t, 0), wrongSlot))
	b.tick()
	var resps []hostapi.DiffResponse
	for range 10 { // past the grace of 8
		resps = b.next(t, nil)
	}
	require.NotEmpty(t, resps[0].Signatures, resps[0].Withheld)
	b.now = b.now.Add(2 * time.Minute)
	b.tick()
	require.True(t, holds(b.pooled(t, 0), b.f.Timeout(0, 1)), "a lone finish is no proof the inference runs")
}
