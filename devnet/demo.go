package devnet

import (
	"context"
	"fmt"
	"io"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	sdk "github.com/cosmos/cosmos-sdk/types"
	txtypes "github.com/cosmos/cosmos-sdk/types/tx"
	banktypes "github.com/cosmos/cosmos-sdk/x/bank/types"

	"github.com/devshard/devshard/chaincfg"
	"github.com/devshard/devshard/executor"
	devshardtypes "github.com/devshard/devshard/x/devshard/types"
)

// Ledger is what a demo run moved, every figure read back from the chain.
type Ledger struct {
	Requests, Streamed int
	// GatewayPaid is the drop in the gateway account's balance.
	GatewayPaid int64
	Escrows     []EscrowLine
	Hosts       []HostLine
	// Fees and Refunds sum the settlements' fees and creator refunds.
	Fees, Refunds uint64
	// ModuleBalance and ModuleOwed are the conservation query's two sides
	// after the run.
	ModuleBalance, ModuleOwed string
	// Jobs counts the jobs each worker finished, by kind, when the hosts
	// hand their jobs to workers (Network.WorkerJobs).
	Jobs map[string]map[string]int
}

// EscrowLine is one settled escrow, from its settlement tx.
type EscrowLine struct {
	ID     uint64
	Epoch  uint64
	Amount uint64
	Paid   uint64 // to the hosts: costs plus fees
	Fees   uint64
	Refund uint64
	TxHash string
}

// HostLine is one host's result.
type HostLine struct {
	Name     string
	Account  string
	Earned   uint64 // settled for its work, from its epoch summaries
	Rewarded uint64 // what it may claim
	Claimed  bool
	// Received is the rise in its bank balance over the run.
	Received int64
}

// Demo sends n requests through the gateway (every third one streamed),
// settles every escrow, waits for the epoch to become claimable and the
// hosts to claim, and returns the ledger.
func Demo(ctx context.Context, nw *Network, n int, progress io.Writer) (*Ledger, error) {
	conn := nw.Chain.Conn()
	bank := banktypes.NewQueryClient(conn)
	q := devshardtypes.NewQueryClient(conn)
	balance := func(addr sdk.AccAddress) (int64, error) {
		res, err := bank.Balance(ctx, &banktypes.QueryBalanceRequest{Address: addr.String(), Denom: chaincfg.Denom})
		if err != nil {
			return 0, err
		}
		return res.Balance.Amount.Int64(), nil
	}
	gw0, err := balance(nw.GatewayAccount.Address)
	if err != nil {
		return nil, err
	}
	host0 := make([]int64, len(nw.Hosts))
	for i, h := range nw.Hosts {
		if host0[i], err = balance(h.Account); err != nil {
			return nil, err
		}
	}
	before, err := nw.Gateway.Gateway.SettledCount(ctx)
	if err != nil {
		return nil, err
	}

	led := &Ledger{Requests: n}
	fmt.Fprintf(progress, "demo: sending %d requests to %s\n", n, nw.Info.Gateway.URL)
	if led.Streamed, err = sendRequests(ctx, nw.Info.Gateway, n, progress); err != nil {
		return nil, err
	}
	fmt.Fprintln(progress, "demo: settling the gateway's escrows")
	if err := nw.Gateway.Gateway.SettleAll(ctx); err != nil {
		return nil, err
	}
	settled, err := nw.Gateway.Gateway.Settled(ctx)
	if err != nil {
		return nil, err
	}
	settled = settled[before:]
	epochs := map[uint64]bool{}
	for _, s := range settled {
		line, err := escrowLine(ctx, nw, s.ID, s.TxHash)
		if err != nil {
			return nil, err
		}
		led.Escrows = append(led.Escrows, line)
		led.Fees += line.Fees
		led.Refunds += line.Refund
		epochs[line.Epoch] = true
	}
	fmt.Fprintf(progress, "demo: waiting for epoch(s) %v to become claimable and the hosts to claim\n", sortedKeys(epochs))
	for epoch := range epochs {
		if err := waitClaims(ctx, nw, epoch); err != nil {
			return nil, err
		}
	}
	gw1, err := balance(nw.GatewayAccount.Address)
	if err != nil {
		return nil, err
	}
	led.GatewayPaid = gw0 - gw1
	for i, h := range nw.Hosts {
		line := HostLine{Name: h.Name, Account: h.Account.String()}
		for epoch := range epochs {
			res, err := q.Summary(ctx, &devshardtypes.QuerySummaryRequest{EpochId: epoch, Address: h.Account.String()})
			if err != nil {
				continue // no work in that epoch
			}
			line.Earned += res.Summary.Earned
			line.Rewarded += res.Summary.Rewarded
			line.Claimed = res.Summary.Claimed || res.Summary.Rewarded == 0
		}
		after, err := balance(h.Account)
		if err != nil {
			return nil, err
		}
		line.Received = after - host0[i]
		led.Hosts = append(led.Hosts, line)
	}
	cons, err := q.Conservation(ctx, &devshardtypes.QueryConservationRequest{})
	if err != nil {
		return nil, err
	}
	led.ModuleBalance, led.ModuleOwed = cons.Balance, cons.Owed
	if len(nw.Workers) > 0 {
		if led.Jobs, err = nw.WorkerJobs(ctx); err != nil {
			return nil, err
		}
	}
	return led, nil
}

func sortedKeys(m map[uint64]bool) []uint64 {
	out := make([]uint64, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// sendRequests sends n chat completions, four at a time, every third one
// streamed, and returns how many were streamed.
func sendRequests(ctx context.Context, gw GatewayRef, n int, progress io.Writer) (int, error) {
	c := NewClient(gw.URL, gw.APIKey)
	var (
		mu       sync.Mutex
		firstErr error
		done     int
		failed   int
		streamed int
	)
	work := make(chan int)
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				stream := i%3 == 2
				req := ChatRequest{Model: executor.BuiltinModel, MaxTokens: 32 + i%32,
					Messages: []executor.Message{{Role: "user", Content: fmt.Sprintf("demo request %d: tell me about escrows", i)}}}
				_, err := c.Chat(ctx, req, stream)
				mu.Lock()
				if err != nil && firstErr == nil {
					firstErr = fmt.Errorf("request %d: %w", i, err)
				}
				done++
				if stream {
					streamed++
				}
				if err != nil {
					failed++
				}
				if done%10 == 0 || done == n {
					if failed > 0 {
						fmt.Fprintf(progress, "demo: %d/%d requests done, %d of them failed\n", done, n, failed)
					} else {
						fmt.Fprintf(progress, "demo: %d/%d requests answered\n", done, n)
					}
				}
				mu.Unlock()
			}
		}()
	}
	for i := range n {
		work <- i
	}
	close(work)
	wg.Wait()
	return streamed, firstErr
}

// escrowLine reads one settlement back from its tx on chain.
func escrowLine(ctx context.Context, nw *Network, id uint64, hash string) (EscrowLine, error) {
	line := EscrowLine{ID: id, TxHash: hash}
	esc, err := devshardtypes.NewQueryClient(nw.Chain.Conn()).Escrow(ctx, &devshardtypes.QueryEscrowRequest{Id: id})
	if err != nil {
		return line, err
	}
	line.Epoch, line.Amount = esc.Escrow.Snapshot.Epoch, esc.Escrow.Snapshot.Amount
	if hash == "" {
		return line, fmt.Errorf("escrow %d was settled before the gateway recorded the tx; its figures cannot be read back", id)
	}
	res, err := txtypes.NewServiceClient(nw.Chain.Conn()).GetTx(ctx, &txtypes.GetTxRequest{Hash: hash})
	if err != nil {
		return line, fmt.Errorf("settlement tx %s of escrow %d: %w", hash, id, err)
	}
	for _, any := range res.Tx.Body.Messages {
		var msg sdk.Msg
		if err := nw.Chain.Encoding.InterfaceRegistry.UnpackAny(any, &msg); err != nil {
			return line, err
		}
		if m, ok := msg.(*devshardtypes.MsgSettleEscrow); ok && m.Settlement.EscrowId == id {
			line.Fees = m.Settlement.Fees
		}
	}
	for _, ev := range res.TxResponse.Events {
		if ev.Type != "devshard.devshard.v1.EventEscrowSettled" {
			continue
		}
		for _, a := range ev.Attributes {
			v, _ := strconv.ParseUint(strings.Trim(a.Value, `"`), 10, 64)
			switch a.Key {
			case "paid":
				line.Paid = v
			case "refund":
				line.Refund = v
			}
		}
	}
	return line, nil
}

// waitClaims waits until epoch is claimable and every host with a reward in
// it has claimed.
func waitClaims(ctx context.Context, nw *Network, epoch uint64) error {
	q := devshardtypes.NewQueryClient(nw.Chain.Conn())
	deadline := time.Now().Add(time.Duration(4*nw.cfg.Params.EpochLength)*nw.cfg.BlockTime + 60*time.Second)
	for {
		e, err := q.Epoch(ctx, &devshardtypes.QueryEpochRequest{Id: epoch})
		if err == nil && (e.Epoch.State == devshardtypes.EpochClaimable || e.Epoch.State.IsFinal()) {
			pending := 0
			for _, h := range nw.Hosts {
				s, err := q.Summary(ctx, &devshardtypes.QuerySummaryRequest{EpochId: epoch, Address: h.Account.String()})
				if err == nil && !s.Summary.Claimed && s.Summary.Rewarded > 0 && !s.Summary.Swept {
					pending++
				}
			}
			if pending == 0 {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("epoch %d: the hosts' claims did not land in time", epoch)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

// Print writes the ledger as a short table.
func (l *Ledger) Print(w io.Writer) {
	fmt.Fprintf(w, "\nledger (read back from the chain; amounts in %s):\n", chaincfg.Denom)
	fmt.Fprintf(w, "  requests            %d (%d streamed)\n", l.Requests, l.Streamed)
	fmt.Fprintf(w, "  gateway paid        %d\n", l.GatewayPaid)
	for _, e := range l.Escrows {
		fmt.Fprintf(w, "  escrow %-4d         locked %d, paid to hosts %d (fees %d), refunded %d  tx %s\n", e.ID, e.Amount, e.Paid, e.Fees, e.Refund, shortHash(e.TxHash))
	}
	var earned uint64
	for _, h := range l.Hosts {
		claimed := "claimed"
		if !h.Claimed {
			claimed = "not yet claimed"
		}
		fmt.Fprintf(w, "  %-8s            earned %d, rewarded %d (%s), balance +%d  %s\n", h.Name, h.Earned, h.Rewarded, claimed, h.Received, h.Account)
		earned += h.Earned
	}
	fmt.Fprintf(w, "  fees                %d\n", l.Fees)
	fmt.Fprintf(w, "  refunds             %d\n", l.Refunds)
	fmt.Fprintf(w, "  hosts earned total  %d\n", earned)
	fmt.Fprintf(w, "  module account      %s (owes %s)\n", l.ModuleBalance, l.ModuleOwed)
	for _, who := range slices.Sorted(maps.Keys(l.Jobs)) {
		byKind := l.Jobs[who]
		fmt.Fprintf(w, "  %-18s  ran %d inference and %d validation jobs\n", who, byKind["inference"], byKind["validation"])
	}
}

func shortHash(h string) string {
	if len(h) > 12 {
		return h[:12] + "…"
	}
	return h
}
