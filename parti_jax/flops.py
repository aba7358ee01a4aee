"""Model FLOPs of the Parti transformer, counted from its shapes.

Counts the multiply-adds of every matmul (2 FLOPs each): projections, MLPs,
logits and the attention score and mix products that the implementation
computes: the full (masked) matrices, except the decoder's causal
self-attention, which skips the key blocks after each query block. Embedding lookups, norms,
softmax and the optimizer are not counted, as in the usual MFU definition
(PaLM, Appendix B). Backward is twice the forward.
"""
from parti_jax.config import TransformerConfig
from parti_jax.layers import query_blocks


def forward_flops(cfg: TransformerConfig, batch: int, text_length: int, image_length: int) -> float:
  d = cfg.emb_dim
  inner = cfg.num_heads * cfg.attention_head_dim
  attention_proj = 4 * d * inner  # q, k, v, out
  mlp = (len(cfg.mlp_activations) + 1) * d * cfg.mlp_dim
  text = batch * text_length
  image = batch * image_length
  matmul_params_x_tokens = (
      text * cfg.num_encoder_layers * (attention_proj + mlp) +
      # Self-attention, cross-attention q/out, MLP and the logits per image token.
      image * (cfg.num_decoder_layers * (attention_proj + 2 * d * inner + mlp) +
               d * cfg.image_vocab_size) +
      # Cross-attention keys and values of every text token, in every decoder layer.
      text * cfg.num_decoder_layers * 2 * d * inner)
  # Scores (q.k) and mixing (p.v): 2 products of 2 FLOPs per query-key-channel.
  attention = 4 * batch * inner * (
      cfg.num_encoder_layers * text_length * text_length +
      cfg.num_decoder_layers * (causal_attention_pairs(image_length, cfg.causal_query_blocks) +
                                image_length * text_length))
  return 2.0 * matmul_params_x_tokens + attention


def causal_attention_pairs(length: int, blocks: int) -> int:
  """Query-key pairs computed by causal self-attention in `blocks` query blocks."""
  return sum((end - start) * end for start, end in query_blocks(length, blocks))


def train_flops(cfg: TransformerConfig, batch: int, text_length: int, image_length: int) -> float:
  """Forward + backward of one training step."""
  return 3.0 * forward_flops(cfg, batch, text_length, image_length)


def vit_stack_flops(num_layers: int, dim: int, mlp_dim: int, tokens: int, in_features: int,
                    out_features: int, batch: int) -> float:
  """Forward matmul FLOPs of a ViT stack as in the tokenizer: input projection,
  blocks (attention over all tokens, plain MLP) and the tanh head."""
  per_token = (in_features * dim + num_layers * (4 * dim * dim + 2 * dim * mlp_dim) +
               dim * mlp_dim + mlp_dim * out_features)
  attention = 4 * num_layers * tokens * tokens * dim
  return 2.0 * batch * tokens * per_token + batch * attention
