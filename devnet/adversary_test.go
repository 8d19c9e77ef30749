package devnet

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/devshard/devshard/chain/node"
	"github.com/devshard/devshard/executor"
	"github.com/devshard/devshard/gateway"
	"github.com/devshard/devshard/hostapi"
	"github.com/devshard/devshard/httpauth"
	"github.com/devshard/devshard/session"
	"github.com/devshard/devshard/session/sessionpb"
	"github.com/devshard/devshard/session/sessiontest"
	"github.com/devshard/devshard/signing"
	devshardtypes "github.com/devshard/devshard/x/devshard/types"
)

// The adversary suite: attacker roles, each a short script, run beside the
// honest roles on one devnet (a real chain, real `devshard host` processes,
// the real gateway). Each step asserts what the honest parties end with:
// their pay and punishments on chain, what their hosts accept, and that the
// session still serves and settles. docs/protocol.md lists the attacks;
// the unit tests named there pin each defence one level down.
//
// Roles:
//   - lazy executor: host 2 serves a model that answers with fixed text
//     instead of running the request (a real host process whose upstream
//     lies). Its sampled peers must catch it: it is paid nothing for the
//     inferences they invalidate, and the honest hosts lose nothing.
//   - stream hijacker: a co-member opens the executor's inference stream
//     before the gateway does.
//   - diff tamperer: a co-member re-posts a stored diff with an unknown
//     protobuf field added.
//   - pool flooder: a co-member gossips forged txs for inferences that do
//     not exist.
//   - forking gateway: a gateway of its own escrow sends different diffs
//     at one nonce to different hosts, then finalizes one branch.
//   - censoring gateway: a gateway of its own escrow has a victim execute
//     and never carries the victim's ConfirmStart and FinishInference.
//   - executor-picking gateway: a gateway of its own escrow pads with
//     empty diffs so that every request lands on one favoured host.
//   - Sybil co-member: a member colluding with the lazy executor vouches
//     for its answers with slots the sampling did not pick, by gossip and
//     through a gateway that would carry the votes.
func TestAdversaries(t *testing.T) {
	liar := startLyingModel(t)
	const lazy = 2 // the host whose model lies
	e := startNetwork(t, 15*time.Minute, func(c *Config) {
		// Sample every other vote, so the lazy host is caught within a few
		// dozen requests whatever slots the group drew.
		c.Params.ValidationRateBps = 5_000
		// Every step needs its actors in the escrow's group: with 16 slots
		// drawn by weight from three equal hosts, a host is left out about
		// one time in 650 (with 6 slots, one time in 11).
		c.Params.GroupSize = 16
		// A short seal grace, so the censoring gateway's bound comes within
		// a few seconds of diffs.
		c.Params.SealGraceNonces = 8
		c.Accounts = []node.Account{rogueAccount}
		c.HostArgs = func(i int) []string {
			if i != lazy {
				return nil
			}
			return []string{"--executor-kind", "openai", "--executor-url", liar.URL, "--executor-models", executor.BuiltinModel}
		}
	})
	nw, ctx, grace := e.nw, e.ctx, e.nw.cfg.Params.SealGraceNonces

	t.Run("lazy executor: invalidated by its sampled peers and not paid for it", func(t *testing.T) {
		e.t = t
		// Groups are drawn by weight, so one may leave the liar out (rarely
		// with 16 slots). An epoch whose group left the liar out shows
		// nothing of it, so the step moves to the next epoch.
		var ss []settled
		var byHost map[string]uint64
		for attempt := 1; ; attempt++ {
			skip, err := nw.Gateway.Gateway.SettledCount(ctx)
			require.NoError(t, err)
			e.waitEpochStart() // one escrow for the whole step
			sendAny(t, e, 30, "lazy-1")
			// Validations run in the background; the next requests' diffs
			// carry their votes and the challenges they open.
			time.Sleep(3 * time.Second)
			sendAny(t, e, 10, "lazy-2")
			time.Sleep(3 * time.Second)
			sendAny(t, e, 5, "lazy-3")
			ss = e.settleAll(skip)
			byHost = invalidByHost(t, nw, ss)
			if _, drawn := byHost[nw.Hosts[lazy].Name]; drawn || attempt == 3 {
				break
			}
			t.Logf("attempt %d: the group drew no slot for the lazy host (%v); again in the next epoch", attempt, byHost)
		}
		require.Positive(t, byHost[nw.Hosts[lazy].Name], "the lazy host's invalid answers were caught: %v", byHost)
		// An honest host loses nothing to the liar's votes unless the group
		// drew the liar enough slots to decide against it alone (a strict
		// majority of the slots eligible to vote on its work and a third of
		// the group: docs/protocol.md, "Votes and thresholds"), which the
		// rules allow.
		for i, h := range nw.Hosts {
			if i == lazy {
				continue
			}
			exposed := false
			for _, s := range ss {
				liar, own := slotsOf(s.snap, nw.Hosts[lazy]), slotsOf(s.snap, h)
				n := len(s.snap.Group)
				exposed = exposed || own > 0 && 2*liar > n-own && 3*liar >= n
			}
			if exposed {
				t.Logf("%s: the group drew the liar enough slots to decide against it alone; %d invalid", h.Name, byHost[h.Name])
				continue
			}
			require.Zero(t, byHost[h.Name], "%s answered honestly and lost nothing: %v", h.Name, byHost)
		}
		for _, s := range ss {
			require.Equal(t, s.snap.Amount, s.plan.Refund+s.plan.Fees+sumCosts(s.msg), "escrow %d conserves", s.snap.EscrowId)
		}
		// The liar, and an honest host it outvoted, are punished at the
		// epoch's accounting and sit the next epoch out; the steps below
		// need every host in the groups they draw.
		e.waitEveryHostServes(ss)
	})

	t.Run("stream hijacker: a co-member cannot open the executor's stream", func(t *testing.T) {
		e.t = t
		sendAny(t, e, 1, "open") // an open escrow to aim at
		views := nw.Gateway.Gateway.Escrows()
		require.NotEmpty(t, views)
		v := views[0]
		member := e.coMember(v.ID, lazy)
		tried := 0
		for _, h := range nw.Hosts {
			if h == member || !e.holds(h, v.ID) {
				continue
			}
			tried++
			body, _ := json.Marshal(hostapi.InferenceRequest{Nonce: v.Nonce + 1, Request: executor.Request{Model: executor.BuiltinModel,
				Messages: []executor.Message{{Role: "user", Content: "steal me"}}, MaxTokens: 8}})
			status, msg := memberCall(t, e, member, h, http.MethodPost, fmt.Sprintf("/v1/sessions/%d/inference", v.ID), body)
			require.Equal(t, http.StatusForbidden, status, "%s let a co-member open a stream: %s", h.Name, msg)
		}
		require.Positive(t, tried, "escrow %d has a member besides %s to aim at", v.ID, member.Name)
		before := nw.Gateway.Gateway.Escrows()[0].Nonce
		sendAny(t, e, 3, "after-hijack")
		require.Greater(t, nw.Gateway.Gateway.Escrows()[0].Nonce, before, "the gateway still serves")
	})

	t.Run("diff tamperer: a re-encoded diff is refused and the session goes on", func(t *testing.T) {
		e.t = t
		sendAny(t, e, 1, "tamper")
		v := nw.Gateway.Gateway.Escrows()[0]
		member := e.coMember(v.ID, lazy)
		var from, to *Host
		for _, h := range nw.Hosts {
			if !e.holds(h, v.ID) {
				continue
			}
			if from == nil {
				from = h
			} else if to == nil && h != member {
				to = h
			}
		}
		require.NotNil(t, to, "two hosts of escrow %d", v.ID)
		raw := storedDiff(t, e, member, from, v.ID, v.Nonce)
		// Field 15, varint 1: unknown to sessionpb.Diff, ignored by a lax
		// decoder, so the gateway's signature would still hold.
		tampered := append(bytes.Clone(raw), 0x78, 0x01)
		body, _ := json.Marshal(hostapi.DiffRequest{Diff: tampered})
		status, msg := memberCall(t, e, member, to, http.MethodPost, fmt.Sprintf("/v1/sessions/%d/diffs", v.ID), body)
		require.Equal(t, http.StatusBadRequest, status, "%s took a non-canonical diff: %s", to.Name, msg)
		sendAny(t, e, 3, "after-tamper")
		now := nw.Gateway.Gateway.Escrows()[0]
		// Members other than the executor get diffs held for a moment.
		require.Eventually(t, func() bool { return e.hostRoot(to, now.ID, now.Nonce) == now.Root }, 10*time.Second, 100*time.Millisecond,
			"%s still follows the gateway's diffs", to.Name)
	})

	t.Run("pool flooder: forged txs for inferences that do not exist are refused", func(t *testing.T) {
		e.t = t
		sendAny(t, e, 1, "flood")
		v := nw.Gateway.Gateway.Escrows()[0]
		member := e.coMember(v.ID, lazy)
		var target *Host
		for _, h := range nw.Hosts {
			if h != member && e.holds(h, v.ID) {
				target = h
			}
		}
		require.NotNil(t, target)
		slot := slotOf(t, e, member, v.ID)
		for i := range 50 {
			// Signed by the member itself, so only the state check stops it.
			tx := &sessionpb.Tx{Slot: slot, Body: &sessionpb.Tx_Finish{Finish: &sessionpb.FinishInference{
				InferenceId: v.Nonce + 1000 + uint64(i), InputTokens: 1, OutputTokens: 1, ResponseHash: sessiontest.Hash("flood", i)}}}
			signTxAs(t, e, member, v.ID, tx)
			raw, err := tx.Marshal()
			require.NoError(t, err)
			body, _ := json.Marshal(hostapi.GossipRequest{Tx: raw})
			status, msg := memberCall(t, e, member, target, http.MethodPost, fmt.Sprintf("/v1/sessions/%d/gossip", v.ID), body)
			require.GreaterOrEqual(t, status, 400, "%s pooled a tx for inference that does not exist: %s", target.Name, msg)
			require.Less(t, status, 500, msg)
		}
		before := nw.Gateway.Gateway.Escrows()[0].Nonce
		sendAny(t, e, 3, "after-flood")
		require.Greater(t, nw.Gateway.Gateway.Escrows()[0].Nonce, before, "the gateway still serves")
	})

	t.Run("forking gateway: no branch of a fork can be settled", func(t *testing.T) {
		e.t = t
		forkingGateway(t, e)
	})

	t.Run("executor-picking gateway: padding is paid to every slot, work only to who did it", func(t *testing.T) {
		e.t = t
		pickingGateway(t, e, nw.Hosts[lazy])
	})

	t.Run("Sybil co-member: unsampled vouching is refused by every host", func(t *testing.T) {
		e.t = t
		sybilVouches(t, e, nw.Hosts[lazy])
	})

	t.Run("censoring gateway: the victim is not timed out, stops working, and the others stop signing", func(t *testing.T) {
		e.t = t
		censoringGateway(t, e, grace)
	})
}

// forkingGateway: the rogue splits the group so that neither side holds
// more than 2/3 of the slots, gives each side its own diff 1, and
// finalizes side A's branch. Every host refuses the other branch as a
// fork, and no branch gathers a quorum, so the chain refuses to settle it.
func forkingGateway(t *testing.T, e *e2e) {
	// A group drawn with one host holding more than 2/3 of the slots is
	// that host's to settle whatever the gateway does: draw again (the
	// unused escrow goes back to the rogue by expiry).
	var r *rogue
	var sideA, sideB []*Host
	for try := 0; sideB == nil; try++ {
		require.Less(t, try, 8, "no group with two sides short of a quorum in 8 draws")
		r = newRogue(t, e, 10_000_000)
		sideA, sideB = forkSides(r)
	}
	n := len(r.snap.Group)
	sA, sB := r.replica(), r.replica()
	startA, reqA := r.request(sA, "branch A")
	dA := r.next(sA, startA)
	startB, reqB := r.request(sB, "branch B")
	dB := r.next(sB, startB)
	for _, h := range sideA {
		status, _, msg := r.deliver(h, dA, map[uint64]executor.Request{1: reqA})
		require.Equal(t, http.StatusOK, status, msg)
	}
	for _, h := range sideB {
		status, _, msg := r.deliver(h, dB, map[uint64]executor.Request{1: reqB})
		require.Equal(t, http.StatusOK, status, msg)
	}
	// The other branch is a fork to everyone.
	for _, h := range sideA {
		status, _, msg := r.deliver(h, dB, nil)
		require.Equal(t, http.StatusConflict, status, "%s: %s", h.Name, msg)
	}
	for _, h := range sideB {
		status, _, msg := r.deliver(h, dA, nil)
		require.Equal(t, http.StatusConflict, status, "%s: %s", h.Name, msg)
	}
	// Side A's branch, finalized: only side A signs it.
	f1 := r.next(sA, finalizeTx())
	f2 := r.next(sA, finalizeTx())
	var sigs []*sessionpb.SlotSignature
	for _, h := range sideA {
		for _, d := range []*sessionpb.Diff{f1, f2} {
			status, reply, msg := r.deliver(h, d, nil)
			require.Equal(t, http.StatusOK, status, msg)
			if d == f2 {
				for _, ss := range signedSlots(t, reply) {
					sigs = append(sigs, &sessionpb.SlotSignature{Slot: ss.Slot, Sig: ss.Sig})
				}
			}
		}
	}
	for _, h := range sideB {
		status, _, msg := r.deliver(h, f1, nil)
		require.GreaterOrEqual(t, status, 400, "%s took side A's diff on top of side B's: %s", h.Name, msg)
	}
	require.False(t, quorum(n, len(sigs)), "side A holds %d of %d slots", len(sigs), n)
	err := r.settleWith(sA, sigs)
	require.Error(t, err, "the chain settled a forked branch signed by %d of %d slots", len(sigs), n)
	closed, _, cerr := r.chain.Closed(e.ctx, r.snap.EscrowId)
	require.NoError(t, cerr)
	require.False(t, closed, "escrow %d is still open: its coins go back to the rogue only by expiry", r.snap.EscrowId)
}

// censoringGateway: the rogue starts an inference on a victim's slot, takes
// the answer, and never carries the victim's ConfirmStart and
// FinishInference, sending empty diffs past the seal grace instead. The
// victim pushes its txs to its peers; no honest peer votes it out; every
// host ends up withholding its signature, so the rogue holds no quorum on
// any root past the bound; and the victim refuses to run more for it.
func censoringGateway(t *testing.T, e *e2e, grace uint64) {
	r := newRogue(t, e, 10_000_000)
	s := r.replica()
	members := r.hosts()
	var victim *Host
	for _, h := range e.nw.Hosts {
		if _, ok := members[h]; ok {
			victim = h
			break
		}
	}
	require.NotNil(t, victim)
	step := func(txs []*sessionpb.Tx, reqs map[uint64]executor.Request) map[*Host]*hostapi.DiffResponse {
		d := r.next(s, txs...)
		out := map[*Host]*hostapi.DiffResponse{}
		for h := range members {
			status, reply, msg := r.deliver(h, d, reqs)
			require.Equal(t, http.StatusOK, status, "%s at nonce %d: %s", h.Name, d.Nonce, msg)
			out[h] = reply
		}
		return out
	}
	// Empty diffs until the victim executes the next nonce.
	holds := func(slot uint32) bool { return slices.Contains(members[victim], slot) }
	for !holds(s.Executor(s.Nonce() + 1)) {
		step(nil, nil)
	}
	start, req := r.request(s, "censored")
	id := s.Nonce() + 1
	step([]*sessionpb.Tx{start}, map[uint64]executor.Request{id: req})
	body, _ := json.Marshal(hostapi.InferenceRequest{Nonce: id, Request: req})
	status, stream := r.call(victim, http.MethodPost, fmt.Sprintf("/v1/sessions/%d/inference", r.snap.EscrowId), body)
	require.Equal(t, http.StatusOK, status, stream)
	require.Contains(t, stream, `"done":true`, "the victim answered")

	// The rogue never carries the victim's txs. Diffs go on, slowly enough
	// for the hosts' ticks (re-gossip, timeout votes) to run between them.
	var last map[*Host]*hostapi.DiffResponse
	for range 3 * grace {
		last = step(nil, nil)
		time.Sleep(250 * time.Millisecond)
	}
	signed := 0
	for h, reply := range last {
		if len(reply.Signatures) > 0 {
			signed += len(members[h])
			t.Logf("%s still signs at nonce %d", h.Name, reply.Nonce)
		}
	}
	require.False(t, quorum(len(r.snap.Group), signed), "%d of %d slots signed a root that leaves the victim's work out", signed, len(r.snap.Group))
	for h := range members {
		if h == victim {
			continue
		}
		require.NotEmpty(t, last[h].Withheld, "%s holds the victim's txs and withholds", h.Name)
		status, text := r.call(h, http.MethodGet, fmt.Sprintf("/v1/sessions/%d/mempool", r.snap.EscrowId), nil)
		require.Equal(t, http.StatusOK, status, text)
		var pool struct {
			Txs [][]byte `json:"txs"`
		}
		require.NoError(t, json.Unmarshal([]byte(text), &pool))
		for _, raw := range pool.Txs {
			var tx sessionpb.Tx
			require.NoError(t, tx.Unmarshal(raw))
			require.Nil(t, tx.GetTimeout(), "%s offers a timeout vote against the victim: %v", h.Name, &tx)
		}
	}
	// The victim works no more for a gateway that does not carry its work.
	for !holds(s.Executor(s.Nonce() + 1)) {
		step(nil, nil)
	}
	start, req = r.request(s, "censored again")
	id = s.Nonce() + 1
	step([]*sessionpb.Tx{start}, map[uint64]executor.Request{id: req})
	body, _ = json.Marshal(hostapi.InferenceRequest{Nonce: id, Request: req})
	status, text := r.call(victim, http.MethodPost, fmt.Sprintf("/v1/sessions/%d/inference", r.snap.EscrowId), body)
	require.Equal(t, http.StatusConflict, status, text)
}

// pickingGateway: the rogue sends every request to one favoured host,
// padding with empty diffs up to the favoured host's next slot, and carries
// everything else honestly: the answers' txs and the votes the hosts pool.
// It finalizes and settles. The favoured host is paid for its work; every
// slot, favoured or not, gets its share of the fees of every nonce,
// padding included, so picking executors costs the gateway a fee per
// padded nonce and takes no fee from anyone.
func pickingGateway(t *testing.T, e *e2e, liar *Host) {
	r := newRogue(t, e, 10_000_000)
	s := r.replica()
	members := r.hosts()
	var favoured *Host
	for _, h := range e.nw.Hosts {
		if _, ok := members[h]; ok && h != liar {
			favoured = h
			break
		}
	}
	require.NotNil(t, favoured, "an honest host in the group")
	pooled := map[string]*sessionpb.Tx{}
	step := func(first []*sessionpb.Tx, reqs map[uint64]executor.Request) map[*Host]*hostapi.DiffResponse {
		// Carry what the hosts pooled, each tx only if the diff still
		// applies with it.
		txs := first
		for key, tx := range pooled {
			try := append(slices.Clone(txs), tx)
			if _, err := s.Next(&sessionpb.Diff{EscrowId: r.snap.EscrowId, Nonce: s.Nonce() + 1, Txs: try}); err == nil {
				txs = try
			}
			delete(pooled, key)
		}
		d := r.next(s, txs...)
		out := map[*Host]*hostapi.DiffResponse{}
		for h := range members {
			status, reply, msg := r.deliver(h, d, reqs)
			require.Equal(t, http.StatusOK, status, "%s at nonce %d: %s", h.Name, d.Nonce, msg)
			require.Empty(t, reply.Withheld, "%s", h.Name)
			out[h] = reply
			for _, raw := range reply.Mempool {
				tx, err := session.DecodeTx(raw)
				require.NoError(t, err)
				pooled[session.TxKey(tx)] = tx
			}
		}
		return out
	}
	holds := func(slot uint32) bool { return slices.Contains(members[favoured], slot) }
	for i := range 3 {
		for !holds(s.Executor(s.Nonce() + 1)) {
			step(nil, nil)
		}
		start, req := r.request(s, fmt.Sprintf("picked %d", i))
		id := s.Nonce() + 1
		step([]*sessionpb.Tx{start}, map[uint64]executor.Request{id: req})
		body, _ := json.Marshal(hostapi.InferenceRequest{Nonce: id, Request: req})
		status, stream := r.call(favoured, http.MethodPost, fmt.Sprintf("/v1/sessions/%d/inference", r.snap.EscrowId), body)
		require.Equal(t, http.StatusOK, status, stream)
		step(streamTxs(t, stream), nil) // its ConfirmStart and FinishInference
	}
	step([]*sessionpb.Tx{finalizeTx()}, nil)
	last := step([]*sessionpb.Tx{finalizeTx()}, nil)
	var sigs []*sessionpb.SlotSignature
	for _, reply := range last {
		for _, ss := range signedSlots(t, reply) {
			sigs = append(sigs, &sessionpb.SlotSignature{Slot: ss.Slot, Sig: ss.Sig})
		}
	}
	slices.SortFunc(sigs, func(a, b *sessionpb.SlotSignature) int { return int(a.Slot) - int(b.Slot) })
	require.NoError(t, r.settleWith(s, sigs), "the creator settles its finalized root")
	m := s.Settlement()
	m.Signatures = sigs
	plan, err := session.VerifySettlement(r.snap, m, nil)
	require.NoError(t, err)
	want, ok := session.ExpectedFees(r.snap, m.ActiveNonces)
	require.True(t, ok)
	require.Equal(t, want, plan.Fees, "every nonce, padding included, paid its fee")
	var work uint64
	for _, p := range plan.Slots {
		require.GreaterOrEqual(t, p.FeeShare, plan.Fees/uint64(len(r.snap.Group)), "slot %d gets its share of the fees", p.Slot)
		if holds(p.Slot) {
			// The liar among the validators may have invalidated some, where
			// the group drew it enough slots (see the lazy-executor role).
			work += p.Finished + p.Stats.Invalid
			continue
		}
		require.Zero(t, p.Cost, "slot %d did no work and is charged for none", p.Slot)
	}
	require.Equal(t, uint64(3), work, "the favoured host's three inferences are accounted to it")
	require.Equal(t, r.snap.Amount, plan.Refund+plan.Fees+sumCosts(m), "the escrow conserves")
	closed, _, err := r.chain.Closed(e.ctx, r.snap.EscrowId)
	require.NoError(t, err)
	require.True(t, closed, "the finalized root was paid at once")
}

// streamTxs decodes the executor's signed txs from an inference stream's
// done event.
func streamTxs(t *testing.T, stream string) []*sessionpb.Tx {
	t.Helper()
	for _, line := range strings.Split(stream, "\n") {
		data, ok := strings.CutPrefix(line, "data: ")
		if !ok {
			continue
		}
		var ev hostapi.StreamEvent
		require.NoError(t, json.Unmarshal([]byte(data), &ev))
		if !ev.Done {
			continue
		}
		var txs []*sessionpb.Tx
		for _, raw := range ev.Txs {
			tx, err := session.DecodeTx(raw)
			require.NoError(t, err)
			txs = append(txs, tx)
		}
		return txs
	}
	t.Fatalf("the stream has no done event: %s", stream)
	return nil
}

// sybilVouches: the rogue gateway has the lazy host answer inferences and
// carries its ConfirmStart and FinishInference; a co-member colluding with
// it signs Valid votes with a slot the sampling did not pick. Every other
// host refuses them by gossip (409), and refuses a diff that carries them
// (400, not sampled), so no unsampled slot can vouch before the sampled
// ones speak; the session goes on.
func sybilVouches(t *testing.T, e *e2e, liar *Host) {
	r := newRogue(t, e, 10_000_000)
	s := r.replica()
	members := r.hosts()
	exec, ok := members[liar]
	if !ok {
		exec = nil
		for _, h := range e.nw.Hosts {
			if len(members[h]) > 0 {
				liar, exec = h, members[h]
				break
			}
		}
	}
	step := func(txs ...*sessionpb.Tx) {
		d := r.next(s, txs...)
		for h := range members {
			status, _, msg := r.deliver(h, d, nil)
			require.Equal(t, http.StatusOK, status, "%s at nonce %d: %s", h.Name, d.Nonce, msg)
		}
	}
	for try := 0; ; try++ {
		require.Less(t, try, 12, "no inference left a co-member's slot unsampled in 12 tries")
		for !slices.Contains(exec, s.Executor(s.Nonce()+1)) {
			step()
		}
		start, req := r.request(s, fmt.Sprintf("vouch %d", try))
		id := s.Nonce() + 1
		d := r.next(s, start)
		for h := range members {
			status, _, msg := r.deliver(h, d, map[uint64]executor.Request{id: req})
			require.Equal(t, http.StatusOK, status, msg)
		}
		body, _ := json.Marshal(hostapi.InferenceRequest{Nonce: id, Request: req})
		status, stream := r.call(liar, http.MethodPost, fmt.Sprintf("/v1/sessions/%d/inference", r.snap.EscrowId), body)
		require.Equal(t, http.StatusOK, status, stream)
		step(streamTxs(t, stream)...)
		rec, ok := s.Record(id)
		require.True(t, ok)
		sampled := s.SampledSlots(rec)
		for h, slots := range members {
			if h == liar {
				continue
			}
			for _, slot := range slots {
				if slices.Contains(sampled, slot) {
					continue
				}
				// h is the Sybil: an unsampled slot of its vouches.
				vote := &sessionpb.Tx{Slot: slot, Body: &sessionpb.Tx_Validation{Validation: &sessionpb.Validation{InferenceId: id, Valid: true, ResponseHash: rec.ResponseHash}}}
				signTxAs(t, e, h, r.snap.EscrowId, vote)
				raw, err := vote.Marshal()
				require.NoError(t, err)
				gossip, _ := json.Marshal(hostapi.GossipRequest{Tx: raw})
				forged := &sessionpb.Diff{EscrowId: r.snap.EscrowId, Nonce: s.Nonce() + 1, Txs: []*sessionpb.Tx{vote}, PostStateRoot: make([]byte, 32)}
				require.NoError(t, session.SignDiff(r.key, r.snap.ChainId, forged))
				for peer := range members {
					if peer == h {
						continue
					}
					status, msg := memberCall(t, e, h, peer, http.MethodPost, fmt.Sprintf("/v1/sessions/%d/gossip", r.snap.EscrowId), gossip)
					require.Equal(t, http.StatusConflict, status, "%s pooled %s's unsampled vouch: %s", peer.Name, h.Name, msg)
					require.Contains(t, msg, "not sampled")
					status, _, msg = r.deliver(peer, forged, nil)
					require.Equal(t, http.StatusBadRequest, status, "%s took a diff carrying %s's unsampled vouch: %s", peer.Name, h.Name, msg)
					require.Contains(t, msg, "not sampled")
				}
				step() // the session goes on
				return
			}
		}
	}
}

// forkSides splits the rogue's group into two sides, neither holding more
// than 2/3 of the slots, filling side A from the hosts with the fewest
// slots; nil sides if the group cannot be split so.
func forkSides(r *rogue) (sideA, sideB []*Host) {
	n := len(r.snap.Group)
	members := r.hosts()
	hosts := slices.Collect(maps.Keys(members))
	slices.SortFunc(hosts, func(a, b *Host) int {
		if d := len(members[a]) - len(members[b]); d != 0 {
			return d
		}
		return strings.Compare(a.Name, b.Name)
	})
	held := 0
	for _, h := range hosts {
		if len(sideB) == 0 && !quorum(n, held+len(members[h])) {
			sideA = append(sideA, h)
			held += len(members[h])
		} else {
			sideB = append(sideB, h)
		}
	}
	if len(sideA) == 0 || len(sideB) == 0 || quorum(n, n-held) {
		return nil, nil
	}
	return sideA, sideB
}

// startLyingModel serves an OpenAI-compatible model that answers every
// request with the same short text, as a host that skips the work would.
func startLyingModel(t *testing.T) *httptest.Server {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "text/event-stream")
		fmt.Fprintf(w, "data: %s\n\n", `{"choices":[{"delta":{"content":"trust me"},"finish_reason":null}]}`)
		fmt.Fprintf(w, "data: %s\n\n", `{"choices":[{"delta":{},"finish_reason":"stop"}]}`)
		fmt.Fprintf(w, "data: %s\n\n", `{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}`)
		fmt.Fprint(w, "data: [DONE]\n\n")
	}))
	t.Cleanup(srv.Close)
	return srv
}

// sendAny sends n requests one at a time through the gateway and checks
// only that each was answered: a lying host's answers are wrong by design.
func sendAny(t *testing.T, e *e2e, n int, tag string) {
	t.Helper()
	c := e.client()
	for i := range n {
		req := ChatRequest{Model: executor.BuiltinModel, MaxTokens: 8 + i%8,
			Messages: []executor.Message{{Role: "user", Content: fmt.Sprintf("%s request %d", tag, i)}}}
		_, err := c.Chat(e.ctx, req, i%2 == 0)
		require.NoError(t, err, "request %d", i)
	}
}

// invalidByHost sums the settled invalid counts per host name.
func invalidByHost(t *testing.T, nw *Network, ss []settled) map[string]uint64 {
	out := map[string]uint64{}
	for _, s := range ss {
		for slot, hs := range s.msg.HostStats {
			a := s.snap.Group[slot]
			for _, h := range nw.Hosts {
				if bytes.Equal(h.Account, a) {
					out[h.Name] += hs.Invalid
				}
			}
		}
	}
	return out
}

// slotsOf counts the slots h holds in snap's group.
func slotsOf(snap *sessionpb.EscrowSnapshot, h *Host) int {
	n := 0
	for _, a := range snap.Group {
		if bytes.Equal(a, h.Account) {
			n++
		}
	}
	return n
}

// slotOf is the first slot h holds in escrow id.
func slotOf(t *testing.T, e *e2e, h *Host, id uint64) uint32 {
	t.Helper()
	for slot, a := range e.escrowGroup(id) {
		if bytes.Equal(a, h.Account) {
			return uint32(slot)
		}
	}
	t.Fatalf("%s holds no slot of escrow %d", h.Name, id)
	return 0
}

// coMember is the host that plays the attacking co-member in escrow id:
// host 0 when it holds a slot there, else another holder, the liar last.
// An epoch's groups leave out a member that is not ACTIVE (one a busy
// machine made miss inferences is punished), so host 0 may hold none.
func (e *e2e) coMember(id uint64, liar int) *Host {
	e.t.Helper()
	order := append([]*Host{}, e.nw.Hosts...)
	order = append(slices.Delete(order, liar, liar+1), e.nw.Hosts[liar])
	for _, h := range order {
		if e.holds(h, id) {
			return h
		}
	}
	e.t.Fatalf("no host holds a slot of escrow %d", id)
	return nil
}

// waitEveryHostServes waits until the epochs the settlements ss were made
// in are accounted (each punished host is then known), then for a later
// epoch whose members are every host, and for the gateway to retire its
// escrows of earlier epochs: the next escrow's group is drawn from all the
// hosts, and no punishment of those epochs takes one out of the epochs
// that follow. A punished host sits one epoch out (docs/chain.md).
func (e *e2e) waitEveryHostServes(ss []settled) {
	e.t.Helper()
	q := devshardtypes.NewQueryClient(e.nw.Chain.Conn())
	var last string
	current := func() (uint64, bool) {
		cur, err := q.CurrentEpoch(e.ctx, &devshardtypes.QueryCurrentEpochRequest{})
		if err != nil {
			last = err.Error()
			return 0, false
		}
		return cur.Epoch.Id, true
	}
	var accounted uint64 // the current epoch once every epoch of ss is accounted
	require.Eventually(e.t, func() bool {
		for _, s := range ss {
			res, err := q.Epoch(e.ctx, &devshardtypes.QueryEpochRequest{Id: s.snap.Epoch})
			if err != nil {
				last = err.Error()
				return false
			}
			switch st := res.Epoch.State; st {
			case devshardtypes.EpochAccounting, devshardtypes.EpochClaimable, devshardtypes.EpochClosed, devshardtypes.EpochCancelled:
			default:
				last = fmt.Sprintf("epoch %d is %s", s.snap.Epoch, st)
				return false
			}
		}
		var ok bool
		accounted, ok = current()
		return ok
	}, 90*time.Second, 500*time.Millisecond, "the step's epochs are accounted (last: %s)", last)

	var epoch uint64
	require.Eventually(e.t, func() bool {
		var ok bool
		if epoch, ok = current(); !ok {
			return false
		}
		if epoch <= accounted {
			last = fmt.Sprintf("epoch %d was drawn before the accounting", epoch)
			return false
		}
		res, err := q.EpochMembers(e.ctx, &devshardtypes.QueryEpochMembersRequest{EpochId: epoch})
		if err != nil {
			last = err.Error()
			return false
		}
		members := map[string]bool{}
		for _, m := range res.Members {
			members[m.Address] = true
		}
		var out []string
		for _, h := range e.nw.Hosts {
			if !members[h.Account.String()] {
				out = append(out, h.Name)
			}
		}
		last = fmt.Sprintf("epoch %d leaves out %v", epoch, out)
		return len(out) == 0
	}, 90*time.Second, 500*time.Millisecond, "every host serves again (last: %s)", last)
	e.t.Logf("every host is a member of epoch %d (the step's epochs were accounted by epoch %d)", epoch, accounted)
	require.Eventually(e.t, func() bool {
		for _, v := range e.nw.Gateway.Gateway.Escrows() {
			if v.Status == gateway.StatusOpen && v.Epoch < epoch {
				return false
			}
		}
		return true
	}, 60*time.Second, 200*time.Millisecond, "the gateway retired its escrows of epochs before %d", epoch)
}

// storedDiff reads the diff host h stored at nonce, asking as member.
func storedDiff(t *testing.T, e *e2e, member, h *Host, id, nonce uint64) []byte {
	t.Helper()
	var data []byte
	// A member other than the executor gets its diffs held for a moment.
	require.Eventually(t, func() bool {
		status, body := memberCall(t, e, member, h, http.MethodGet, fmt.Sprintf("/v1/sessions/%d/diffs?from=%d&limit=1", id, nonce), nil)
		var out struct {
			Diffs []struct {
				Data []byte `json:"data"`
			} `json:"diffs"`
		}
		if status != http.StatusOK || json.Unmarshal([]byte(body), &out) != nil || len(out.Diffs) == 0 {
			return false
		}
		data = out.Diffs[0].Data
		return true
	}, 10*time.Second, 50*time.Millisecond, "%s stored diff %d of escrow %d", h.Name, nonce, id)
	return data
}

// memberCall makes a request to host to as the co-member from, signed
// with from's key, and returns the status and body.
func memberCall(t *testing.T, e *e2e, from, to *Host, method, path string, body []byte) (int, string) {
	t.Helper()
	req, err := http.NewRequestWithContext(e.ctx, method, to.URL+path, bytes.NewReader(body))
	require.NoError(t, err)
	req.Header.Set("Content-Type", "application/json")
	signRequestAs(t, e, from.Key, to, req, body)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, strings.TrimSpace(string(raw))
}

// escrowGroup is escrow id's group, from the chain.
func (e *e2e) escrowGroup(id uint64) [][]byte {
	e.t.Helper()
	res, err := devshardtypes.NewQueryClient(e.nw.Chain.Conn()).Escrow(e.ctx, &devshardtypes.QueryEscrowRequest{Id: id})
	require.NoError(e.t, err)
	return res.Escrow.Snapshot.Group
}

// signRequestAs signs req as key would, for host to.
func signRequestAs(t *testing.T, e *e2e, key *signing.PrivKey, to *Host, req *http.Request, body []byte) {
	t.Helper()
	require.NoError(t, httpauth.Sign(req, body, key, e.audience(to), time.Now()))
}

// signTxAs signs tx for escrow id with h's key.
func signTxAs(t *testing.T, e *e2e, h *Host, id uint64, tx *sessionpb.Tx) {
	t.Helper()
	require.NoError(t, session.SignTx(h.Key, e.nw.Chain.ChainID, id, tx))
}
